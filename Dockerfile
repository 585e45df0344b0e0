# Ladder: one image for every role in docker-compose.yml (web, migrate, worker, beat).
#
#   docker build -t ladder .
#   docker run --env-file .env -p 8000:8000 ladder              # gunicorn (the default command)
#   docker run --env-file .env ladder python manage.py migrate --noinput
#
# Settings are config.settings.production: DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE), DATABASE_URL,
# REDIS_URL and DJANGO_ALLOWED_HOSTS must be set at run time; see .env.example.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=config.settings.production \
    PYTHONPATH=/app

WORKDIR /app

RUN groupadd --system --gid 10001 ladder \
    && useradd --system --uid 10001 --gid ladder --home-dir /app --no-create-home --shell /usr/sbin/nologin ladder \
    && install -d -o ladder -g ladder /var/lib/ladder

# Dependencies in their own layer, rebuilt only when pyproject.toml changes: with no package folders present
# yet, `pip install .` installs just the pinned dependencies (and an empty `ladder` distribution).
COPY pyproject.toml ./
RUN pip install . && rm -rf build ./*.egg-info

# The code. Only what runs is copied (never .env, .venv, .local or .git). The wheel built from pyproject.toml
# carries the Python modules only, not the templates and static files, so every process imports the project
# from /app (PYTHONPATH above); `pip install .` keeps the installed metadata in step with the source.
COPY manage.py ./
COPY config ./config
COPY annotation ./annotation
COPY api ./api
COPY frontend ./frontend
COPY models_core ./models_core
COPY rlhf ./rlhf
COPY workers ./workers
RUN pip install --no-deps --force-reinstall . && rm -rf build ./*.egg-info

# Static files are collected into the image (served by WhiteNoise). Settings read these variables at import,
# so the build step gets throwaway values; they are not kept in the image and nothing connects to them.
RUN DJANGO_SECRET_KEY=build-only-collectstatic-not-a-secret \
    DATABASE_URL=postgres://x@localhost/x \
    REDIS_URL=redis://localhost:6379/0 \
    python manage.py collectstatic --noinput --verbosity 1

# The code and static files stay owned by root and read-only for the process; /var/lib/ladder is the one
# writable folder (the beat schedule).
USER ladder

EXPOSE 8000
CMD ["gunicorn", "-c", "config/gunicorn.conf.py", "config.wsgi:application"]
