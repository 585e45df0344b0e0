import os

from django.core.wsgi import get_wsgi_application

from config.localenv import load_local_env

load_local_env()  # development settings only; the environment wins
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
application = get_wsgi_application()
