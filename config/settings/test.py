"""The test suite (``make test``): real PostgreSQL and Redis, fast password hashing."""

from config.env import env_str
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
# The deterministic stand-in sampler, named explicitly: tests register checkpoints without a path and sample
# batches with no policy registered. (A worker a test starts may name another sampler in its environment.)
LADDER_DEMO_SAMPLER = env_str("LADDER_DEMO_SAMPLER", "models_core.sampling.DeterministicDemoSampler")
