"""Simulated annotators: clients of the public REST API only (their own tokens; next task, then submit, sometimes
skip, sometimes walk away), whose choices come from a gold preference function (``models_core.gold``) with
Bradley-Terry noise. ``python manage.py simulate_annotators`` makes the accounts and runs them; the load
benchmark and the fault tests run them against a live server and compare the database with their logs.

Their profiles (careful, noisy, careless, left) are those of ``models_core.raters``, shared with the closed-loop demo.

Every annotator skips ``skip_rate`` of its tasks (``POST /tasks/{id}/skip/``) and walks away from
``abandon_rate`` of them (its lease then lapses and the task goes back to the queue). A submit carries an
idempotency key and is retried with the same key after a connection error, a 5xx or a 503, so a label is never
lost nor doubled by a retry. Each request is one line of the log: who, what, the status, the latency and, for a
submit, what was sent and the comparison acknowledged.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import statistics
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from models_core.gold import Gold
from models_core.raters import (  # noqa: F401 - the profiles are part of this module's API
    DEFAULT_MIX,
    PROFILES,
    Profile,
    assign_profiles,
    label_pair,
    parse_mix,
)


def prompt_of(task: dict) -> str:
    """The user turns of the dialogue shown with the pair (the last one is what the responses answer)."""
    return "\n".join(turn["content"] for turn in task["dialogue"] if turn["role"] == "user")


def decide(task: dict, gold: Gold, profile: Profile, rng: random.Random, *, safety: bool) -> dict[str, Any]:
    """The label this annotator gives the task, in the letters shown (A = ``responses[0]``, the left one)."""
    left, right = task["responses"][0]["text"], task["responses"][1]["text"]
    return label_pair(prompt_of(task), left, right, gold, profile, rng, safety=safety)


@dataclass
class RunLog:
    """The clients' log: one dict per request (thread-safe), written as JSON lines; ``saved`` counts the
    acknowledged labels as they come (the progress bar)."""

    events: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    saved: int = 0

    def add(self, **event) -> None:
        with self.lock:
            self.events.append(event)
            self.saved += event["action"] == "label" and bool(event.get("acknowledged"))

    def write(self, path) -> None:
        with open(path, "w", encoding="utf-8") as out:
            for event in self.events:
                out.write(json.dumps(event) + "\n")


RETRY_STATUSES = {500, 502, 503, 504}


class Reply:
    """What a request returned: the status, the headers and the body."""

    def __init__(self, status_code: int, headers: http.client.HTTPMessage, body: bytes):
        self.status_code, self.headers, self.content = status_code, headers, body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content) if self.content else None


class Client:
    """One annotator's keep-alive HTTP/1.1 connection to the server (``http.client``: 0.5 ms of CPU per request
    against 1.7 ms with ``requests``, which matters when 200 of them share two cores with the server they measure); it
    reconnects after an error. Raises ``OSError`` or ``http.client.HTTPException`` when a request fails."""

    def __init__(self, base_url: str, token: str, timeout: float):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base URL {base_url!r} is not http(s)://host[:port]")
        self.https, self.host, self.port = parts.scheme == "https", parts.hostname, parts.port
        self.prefix, self.timeout = parts.path.rstrip("/"), timeout
        self.headers = {"Authorization": f"Token {token}", "Accept": "application/json"}
        self.connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        connection = kind(self.host, self.port, timeout=self.timeout)
        connection.connect()
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def request(self, method: str, path: str, *, json_body: Any = None) -> Reply:
        headers = dict(self.headers)
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            reused = self.connection is not None
            try:
                if self.connection is None:
                    self.connection = self._connect()
                self.connection.request(method, self.prefix + path, body=body, headers=headers)
                response = self.connection.getresponse()
                reply = Reply(response.status, response.headers, response.read())
                if response.will_close:
                    self.close()
                return reply
            except (OSError, http.client.HTTPException):
                self.close()
                # A kept-alive connection the server closed while this annotator was thinking (gunicorn's
                # keep-alive is a few seconds): once more on a fresh one, as urllib3 does. Safe to repeat: a
                # submit carries its idempotency key, a next-task resumes the lease, a skip is idempotent.
                if not reused or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class SimulatedAnnotator(threading.Thread):
    def __init__(self, *, username: str, token: str, base_url: str, batches: dict[int, bool], gold: Gold,
                 profile: Profile, think: float, deadline: float, log: RunLog, seed: int,
                 max_retries: int = 20, timeout: float = 30.0):
        super().__init__(name=f"sim-{username}", daemon=True)
        self.username, self.base_url, self.gold, self.profile = username, base_url.rstrip("/"), gold, profile
        self.batches = dict(batches)  # batch id -> is a safety batch
        self.think, self.deadline, self.log, self.rng = think, deadline, log, random.Random(seed)
        self.max_retries, self.timeout = max_retries, timeout
        self.client = Client(self.base_url, token, timeout)

    # -- one request, logged --------------------------------------------------------------------------------
    def _request(self, action: str, method: str, path: str, json_body: Any = None) -> Reply | None:
        started = time.perf_counter()
        try:
            response = self.client.request(method, path, json_body=json_body)
        except (OSError, http.client.HTTPException) as exc:
            self.log.add(annotator=self.username, action=action, path=path, status=None,
                         ms=(time.perf_counter() - started) * 1000, error=type(exc).__name__, t=time.time())
            return None
        event = {"annotator": self.username, "action": action, "path": path, "status": response.status_code,
                 "ms": (time.perf_counter() - started) * 1000, "t": time.time()}
        if response.status_code >= 400:
            event["body"] = response.text[:300]
            event["json_error"] = response.headers.get("Content-Type", "").startswith("application/json")
        self.log.add(**event)
        return response

    def _pause(self, seconds: float) -> None:
        time.sleep(max(0.0, min(seconds, self.deadline - time.monotonic())))

    def _think_time(self) -> float:
        if self.think <= 0:
            return 0.0
        return self.think * self.profile.think_factor * self.rng.uniform(0.5, 1.5)

    # -- the annotator's loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._annotate()
        finally:
            self.client.close()

    def _annotate(self) -> None:
        if self.think > 0:  # people arrive over a think time, not all in the same millisecond
            self._pause(self.rng.uniform(0, self.think))
        while time.monotonic() < self.deadline and self.batches:
            batch = self.rng.choice(sorted(self.batches))
            response = self._request("next", "POST", f"/api/v1/batches/{batch}/next-task/")
            if response is None or response.status_code in RETRY_STATUSES:
                self._pause(0.5)
                continue
            if response.status_code == 403:  # paused by a quality flag (or no longer on the batch)
                self.batches.pop(batch)
                continue
            if response.status_code != 200:  # 204: nothing left for me here just now
                self._pause(1.0 if self.think > 0 else 0.2)
                continue
            task = response.json()
            if len(task.get("responses") or []) != 2:  # still sampling (prompt mode): come back later
                self._pause(0.5)
                continue
            self._pause(self._think_time())
            if time.monotonic() >= self.deadline:
                break
            draw = self.rng.random()
            if draw < self.profile.abandon_rate:
                self.log.add(annotator=self.username, action="abandon", task=task["id"], t=time.time())
                return  # the lease lapses and the task goes back to the queue
            if draw < self.profile.abandon_rate + self.profile.skip_rate:
                self._request("skip", "POST", f"/api/v1/tasks/{task['id']}/skip/")
                continue
            self._submit(task, decide(task, self.gold, self.profile, self.rng, safety=self.batches[batch]))

    def _submit(self, task: dict, label: dict) -> None:
        """Submit with one idempotency key, retried after a connection error or a 5xx (backing off up to 2 s; past
        the deadline, three tries at most); one "label" line in the log for the outcome."""
        key = str(uuid.uuid4())
        body = {**label, "idempotency_key": key}
        acknowledged = status = None
        for attempt in range(1, self.max_retries + 2):
            response = self._request("submit", "POST", f"/api/v1/tasks/{task['id']}/comparison/", json_body=body)
            if response is not None and response.status_code not in RETRY_STATUSES:
                status = response.status_code
                acknowledged = response.json().get("id") if status in (200, 201) else None
                break
            if time.monotonic() >= self.deadline and attempt >= 3:
                break
            self._pause(min(0.2 * 2 ** (attempt - 1), 2.0))
        self.log.add(annotator=self.username, action="label", task=task["id"], key=key, sent=label,
                     acknowledged=acknowledged, status=status, attempts=attempt, t=time.time())


def summarise(log: RunLog, seconds: float) -> dict[str, Any]:
    """Counts, statuses and latency percentiles per endpoint; labels saved, skipped, walked away from; errors."""
    by_action: dict[str, list[dict]] = defaultdict(list)
    for event in log.events:
        by_action[event["action"]].append(event)
    requests_out = {}
    for action in ("next", "submit", "skip"):
        events = by_action.get(action, [])
        ms = [e["ms"] for e in events if e.get("status") is not None]
        p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99])) if ms else (None, None, None)
        requests_out[action] = {
            "requests": len(events), "statuses": dict(Counter(str(e.get("status")) for e in events)),
            "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "mean_ms": statistics.fmean(ms) if ms else None,
        }
    labels = by_action.get("label", [])
    acknowledged = [e for e in labels if e.get("acknowledged")]
    server_errors = sum(1 for e in log.events if (e.get("status") or 0) >= 500)
    return {
        "seconds": seconds, "requests": requests_out,
        "labels": len(acknowledged), "labels_per_second": len(acknowledged) / seconds if seconds else None,
        "labels_unacknowledged": len(labels) - len(acknowledged),
        "skips": len(by_action.get("skip", [])), "abandoned": len(by_action.get("abandon", [])),
        "server_errors": server_errors,
        "server_errors_not_json": sum(1 for e in log.events if (e.get("status") or 0) >= 500
                                      and not e.get("json_error")),
        "connection_errors": sum(1 for e in log.events if e.get("error")),
    }


def run_annotators(accounts: list[tuple[str, str, Profile]], *, base_url: str, batches: dict[int, bool],
                   gold: Gold, duration: float, think: float, seed: int = 0, log: RunLog | None = None,
                   progress=None) -> tuple[RunLog, dict[str, Any]]:
    """Run one thread per ``(username, token, profile)`` for ``duration`` seconds; returns the log and its
    summary. ``progress(done_labels, elapsed)`` is called about once a second."""
    log = log or RunLog()
    started = time.monotonic()
    deadline = started + duration
    threads = [SimulatedAnnotator(username=u, token=t, base_url=base_url, batches=batches, gold=gold, profile=p,
                                  think=think, deadline=deadline, log=log, seed=seed * 100_003 + i)
               for i, (u, t, p) in enumerate(accounts)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        if progress is not None:
            progress(log.saved, time.monotonic() - started)
        if time.monotonic() > deadline + 60:  # a request hung past its timeout and retries: stop waiting
            break
    return log, summarise(log, time.monotonic() - started)
