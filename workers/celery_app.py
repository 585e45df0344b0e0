import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

app = Celery("ladder")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.include = ["workers.tasks", "workers.signals"]
