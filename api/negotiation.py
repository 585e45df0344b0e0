"""JSON only, without reading the Accept header: for the two requests of every annotation cycle (next task,
submit), where DRF's default negotiation (the Accept list parsed against the browsable API's renderers) cost
more than some of the request's SQL statements. Any other endpoint keeps the default negotiation."""

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer


class JSONOnlyNegotiation(DefaultContentNegotiation):
    """The view's one renderer, whatever the client accepts (parsers are chosen as by default: a body that is
    not JSON is a 415)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        renderer = renderers[0]
        return renderer, renderer.media_type


def json_only(view):
    """Mark a function view, under ``@api_view``, as reading and answering JSON only."""
    view.renderer_classes = [JSONRenderer]
    view.parser_classes = [JSONParser]
    view.content_negotiation_class = JSONOnlyNegotiation
    return view
