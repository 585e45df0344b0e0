"""Token authentication for the API: django-rest-knox's tokens (only a hash is stored), checked in one query.

knox's own ``TokenAuthentication`` reads every token of the caller on every request to delete their expired
ones (``_cleanup_token``): two queries per request, the second growing with the tokens a user holds. Here a
request reads only the tokens with the presented key prefix, with their user, in one plain statement (built by
the ORM, the query took longer to compile than to run, on every API request); an expired one is deleted when
presented, and ``delete_expired_tokens`` (the ``expire_leases`` beat job) removes the rest. What is checked is
knox's: the digest compared in constant time, an inactive user refused, expiry renewed when ``AUTO_REFRESH``.
"""

from __future__ import annotations

import binascii
from hmac import compare_digest

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from knox.crypto import hash_token
from knox.models import AuthToken
from knox.settings import CONSTANTS, knox_settings
from rest_framework import exceptions

from annotation.selectors import ModelRows

_TOKENS, _USERS = ModelRows(AuthToken, "t"), ModelRows(get_user_model(), "u")
_TOKEN_SQL = (f'SELECT {_TOKENS.columns}, {_USERS.columns} FROM "{AuthToken._meta.db_table}" t '
              f'JOIN "{get_user_model()._meta.db_table}" u ON u."{get_user_model()._meta.pk.column}" = t."user_id" '
              'WHERE t."token_key" = %s')


def _tokens_with_users(token_key: str) -> list[AuthToken]:
    with connection.cursor() as cursor:
        cursor.execute(_TOKEN_SQL, [token_key])
        rows = cursor.fetchall()
    found, split = [], len(_TOKENS.names)
    for row in rows:
        auth_token = _TOKENS.instance(row[:split])
        auth_token.user = _USERS.instance(row[split:])
        found.append(auth_token)
    return found


class TokenAuthentication(KnoxTokenAuthentication):
    def authenticate_credentials(self, token):
        """knox's check, on the tokens read by ``_tokens_with_users``."""
        token = token.decode("utf-8")
        for auth_token in _tokens_with_users(token[:CONSTANTS.TOKEN_KEY_LENGTH]):
            if self._cleanup_token(auth_token):
                continue
            try:
                digest = hash_token(token)
            except (TypeError, binascii.Error):
                raise exceptions.AuthenticationFailed(_("Invalid token.")) from None
            if compare_digest(digest, auth_token.digest):
                if knox_settings.AUTO_REFRESH and auth_token.expiry:
                    self.renew_token(auth_token)
                return self.validate_user(auth_token)
        raise exceptions.AuthenticationFailed(_("Invalid token."))

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
