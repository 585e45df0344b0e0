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
