"""The Celery app and thin tasks: ids in, a service call, a stated retry policy. Queues are named in
``workers.queues``; sampling and training never share a queue with web-side housekeeping."""
