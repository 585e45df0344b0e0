"""Where an annotation request's CPU goes: ``--cycles`` next-task + submit cycles through the production WSGI
application in this process (no HTTP, no client), on a database of its own; prints the CPU per request of each
endpoint, its SQL statements, and with ``--profile`` the functions that take the most (cProfile, CPU clock).

    python bench/_profile_annotate.py --cycles 300 [--profile 25]

The load benchmark (``annotate_load.py``) measures the same requests through gunicorn under 200 clients; this is
the tool to find what to cut in them. It prints no ratio: it is a profile, not a benchmark, so its name starts with
an underscore and ``make bench`` leaves it out.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import secrets
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
os.environ.setdefault("DJANGO_SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("LADDER_MIN_SECONDS_ON_TASK", "0")

from _seed import own_database, seed_ready_tasks  # noqa: E402  (bench/ is the script's folder)


def environ(method: str, path: str, token: str, body: bytes = b"") -> dict:
    return {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000", "HTTP_HOST": "127.0.0.1", "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_AUTHORIZATION": f"Token {token}", "HTTP_ACCEPT": "application/json",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.multithread": True,
            "wsgi.multiprocess": True, "wsgi.run_once": False, "REMOTE_ADDR": "127.0.0.1"}


def call(app, env: dict) -> tuple[int, bytes]:
    status = []
    body = b"".join(app(env, lambda s, headers, exc_info=None: status.append(s)))
    return int(status[0].split()[0]), body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=300, help="next-task + submit cycles (default 300)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N functions with the most CPU (cProfile), cumulative and own")
    parser.add_argument("--dump", metavar="FILE", help="with --profile: also write the cProfile stats to FILE "
                        "(read them with pstats, e.g. to list a function's callers)")
    args = parser.parse_args()
    with own_database() as connection:
        from django.core.wsgi import get_wsgi_application

        from annotation import services
        from annotation.models import AnnotationBatch, Focus
        from api.tokens import create_token

        batch = AnnotationBatch.objects.create(name="profile", focus=Focus.HELPFULNESS, overlap=1,
                                               status=AnnotationBatch.Status.OPEN)
        with connection.cursor() as cursor:
            seed_ready_tasks(cursor, batch.pk, args.cycles + 50)
            cursor.execute("ANALYZE")
        user = services.ensure_simulated_annotators(["profiler"], [batch])[0]
        _, token = create_token(user)
        app = get_wsgi_application()
        next_path = f"/api/v1/batches/{batch.pk}/next-task/"

        def cycle() -> tuple[float, float]:
            started = time.process_time()
            status, body = call(app, environ("POST", next_path, token))
            if status != 200:
                raise SystemExit(f"next-task answered {status}: {body[:300]!r}")
            middle = time.process_time()
            task = json.loads(body)
            label = json.dumps({"chosen": "A", "strength": "better", "idempotency_key": str(uuid.uuid4())}).encode()
            status, body = call(app, environ("POST", f"/api/v1/tasks/{task['id']}/comparison/", token, label))
            if status != 201:
                raise SystemExit(f"submit answered {status}: {body[:300]!r}")
            return middle - started, time.process_time() - middle

        for _ in range(20):  # warm: imports, prepared statements, caches
            cycle()
        statements: list[str] = []

        def record(execute, sql, params, many, context):
            statements.append(" ".join(sql.split()))
            return execute(sql, params, many, context)

        with connection.execute_wrapper(record):  # (the request_started signal empties connection.queries)
            cycle()
        profiler = cProfile.Profile(time.process_time) if args.profile else None
        totals = [0.0, 0.0]
        n = args.cycles - 21
        if profiler:
            profiler.enable()
        for _ in range(n):
            a, b = cycle()
            totals[0] += a
            totals[1] += b
        if profiler:
            profiler.disable()
        print(f"profile_annotate: {n} cycles in-process (production settings, no HTTP): CPU per request "
              f"next-task {1000 * totals[0] / n:.2f} ms, submit {1000 * totals[1] / n:.2f} ms"
              + (" (under cProfile: slower than without)" if profiler else ""))
        print(f"SQL statements of one cycle (transaction control not included): {len(statements)}")
        for sql in statements:
            print(f"  {sql[:150]}")
        if profiler:
            if args.dump:
                profiler.dump_stats(args.dump)
            for key in ("cumulative", "tottime"):
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(args.profile)
                print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
