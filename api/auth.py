"""Token authentication for the API: django-rest-knox's tokens (only a hash is stored), checked in one query.

knox's own ``TokenAuthentication`` reads every token of the caller on every request to delete their expired
ones (``_cleanup_token``): two queries per request, the second growing with the tokens a user holds. Here a
request reads only the tokens with the presented key prefix (with their user); an expired one is deleted
when presented, and ``delete_expired_tokens`` (the ``expire_leases`` beat job) removes the rest.
"""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from knox.models import AuthToken


class TokenAuthentication(KnoxTokenAuthentication):
    def _cleanup_token(self, auth_token) -> bool:
        """True (skip it) when this token has expired; it is deleted."""
        if auth_token.expiry is not None and auth_token.expiry < timezone.now():
            auth_token.delete()
            return True
        return False


class TokenScheme(KnoxTokenScheme):
    """The OpenAPI security scheme: knox's, for this class."""

    target_class = "api.auth.TokenAuthentication"


def delete_expired_tokens() -> int:
    deleted, _ = AuthToken.objects.filter(expiry__lt=timezone.now()).delete()
    return deleted
