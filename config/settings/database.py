"""PostgreSQL and Redis. PostgreSQL only: there is no SQLite code path.

``make run`` and ``make test`` set ``DATABASE_URL`` and ``REDIS_URL`` to private servers when none are
configured (see ``config/devservices.py``).
"""

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import env_int, env_str

_database_url = env_str("DATABASE_URL", "")
if not _database_url:
    raise ImproperlyConfigured(
        "Set the environment variable DATABASE_URL (postgres://...). In development, `make run` starts a "
        "private PostgreSQL and writes its URL to .local/env, which manage.py reads while it runs."
    )
DATABASES = {
    "default": dj_database_url.parse(
        _database_url, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0), conn_health_checks=True
    )
}
# Prepared statements: psycopg sends the parameters apart from the SQL (server-side binding) and prepares a
# statement once a connection has run it DATABASE_PREPARE_THRESHOLD times (5), so PostgreSQL stops parsing and
# planning it again: the annotation API runs the same dozen queries on every request, and planning them (2 ms
# for the claim's candidate query) was most of PostgreSQL's time per request. DATABASE_PREPARE_THRESHOLD=0 turns
# it off (a transaction-pooling PgBouncer older than 1.21 needs that).
_prepare_threshold = env_int("DATABASE_PREPARE_THRESHOLD", 5, minimum=0)
if _prepare_threshold:
    DATABASES["default"].setdefault("OPTIONS", {}).update(server_side_binding=True,
                                                          prepare_threshold=_prepare_threshold)
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured(
        f"DATABASE_URL must point to PostgreSQL (postgres://...); got engine {DATABASES['default']['ENGINE']}."
    )

REDIS_URL = env_str("REDIS_URL")
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"REDIS_URL must be a redis:// URL; got {REDIS_URL!r}.")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
    }
}
