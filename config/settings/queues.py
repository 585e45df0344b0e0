"""Celery: Redis broker, queue routing and the periodic schedule.

Queue names and routes live in ``workers.queues`` (the one place they come from). Sampling and training
never share a queue with web-side housekeeping.
"""

from config.env import env_bool, env_int
from config.settings.database import REDIS_URL
from config.settings.protocol import LADDER_DASHBOARD_SWEEP_SECONDS
from workers.queues import Queue, celery_routes

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = Queue.DEFAULT.value
CELERY_TASK_ROUTES = celery_routes()
# A task taken by a worker that dies is redelivered after this many seconds (Redis visibility timeout).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=30)}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# Beat reads its schedule from the database (django-celery-beat): the entries below are synced into it, and the
# weekly RLHF rounds admins schedule (rlhf.rounds.schedule_weekly, or the admin's Periodic tasks) live there too.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    "expire-annotation-leases": {"task": "workers.tasks.expire_leases", "schedule": 60.0},
    "refresh-quality-dashboards": {
        "task": "workers.tasks.refresh_stale_dashboards",
        "schedule": float(LADDER_DASHBOARD_SWEEP_SECONDS),
    },
    "refill-annotation-queues": {
        "task": "workers.tasks.refill_queues",
        "schedule": float(env_int("LADDER_QUEUE_REFILL_SECONDS", 30, minimum=1)),
    },
}
