"""Production (docker-compose, gunicorn): every secret from the environment, HTTPS-only cookies.

``python manage.py check --deploy --settings=config.settings.production`` is clean with the variables in
``.env.example`` filled in.
"""

from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, env_list, env_secret
from config.settings.base import *  # noqa: F403
from config.settings.protocol import LADDER_DEMO_SAMPLER

DEBUG = False
if LADDER_DEMO_SAMPLER:
    # The stand-in writes word salad from a seeded RNG: in production it would put text no model wrote in front
    # of annotators and into reward-model datasets.
    raise ImproperlyConfigured(
        f"LADDER_DEMO_SAMPLER={LADDER_DEMO_SAMPLER!r}: the deterministic stand-in sampler is for tests and demos, "
        "not production. Unset LADDER_DEMO_SAMPLER and register real checkpoints (a path to a model)."
    )
SECRET_KEY = env_secret("DJANGO_SECRET_KEY")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", [])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
X_FRAME_OPTIONS = "DENY"

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
