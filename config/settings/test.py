"""The test suite (``make test``): real PostgreSQL and Redis, fast password hashing."""

from config.settings.base import *  # noqa: F403

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Serve static files from the apps in tests (no collectstatic); the browser tests need them.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
