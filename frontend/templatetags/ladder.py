import markdown as md
import nh3
from django import template
from django.utils.safestring import mark_safe

register = template.Library()


@register.filter
def markdown_safe(text: str) -> str:
    """Render markdown and sanitise the HTML (ammonia's allow-list): scripts and handlers never pass."""
    return mark_safe(nh3.clean(md.markdown(text or "", extensions=["extra", "sane_lists"])))  # noqa: S308


@register.filter
def get_item(mapping, key):
    if not mapping:
        return ""
    value = mapping.get(key, "")
    return value[0] if isinstance(value, list) and value else value


@register.filter
def as_shown(slot: str, task) -> str:
    """The letter the annotator saw for a stored slot: the left column is "A" on screen, whichever response
    it holds (the pair's order is randomised per task)."""
    if not slot or task is None:
        return slot
    return task.letter_for_slot(slot) or slot


@register.filter
def first_line(text: str) -> str:
    """The first non-empty line of a text (a prompt in a list); the caller truncates and auto-escaping
    still applies."""
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""
