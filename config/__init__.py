"""Project configuration: settings split by concern, URLs, WSGI, and the private dev services launcher."""

from config.localenv import load_local_env

# Beside `make run`, the URLs of its private servers (.local/env), before any settings module is read: every
# way in (manage.py, WSGI, `celery -A workers.celery_app`) imports this package first. Development settings
# only; variables in the environment win.
load_local_env()

from workers.celery_app import app as celery_app  # noqa: E402

__all__ = ["celery_app"]
