"""Per-user API tokens (django-rest-knox: only a hash is stored; the token is shown once, at creation)."""

from django.db import transaction
from knox.models import AuthToken


def create_token(user) -> tuple[AuthToken, str]:
    with transaction.atomic():
        return AuthToken.objects.create(user=user)


def revoke_token(user, token_key: str) -> int:
    """Revoke the caller's own token with this key; returns how many were revoked (0 or 1)."""
    if not token_key or "\x00" in token_key:
        return 0
    deleted, _ = AuthToken.objects.filter(user=user, token_key=token_key).delete()
    return deleted


def tokens_of(user):
    return AuthToken.objects.filter(user=user).order_by("-created")
