"""Project configuration: settings split by concern, URLs, WSGI, and the private dev services launcher."""

from workers.celery_app import app as celery_app

__all__ = ["celery_app"]
