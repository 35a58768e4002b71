"""Observability: Prometheus metrics of a store and its readiness over HTTP
(docs/warmup.md, "Metrics and HTTP").

Metrics are read from the store when scraped (a collector, nothing counted
on the write path): the warmup's phases, replay records, bytes and rate,
writes not yet durable, problems by kind, last and durable LSN, and the
last checkpoint. ``store.serve_http()`` serves ``/readyz``, ``/livez`` and
``/metrics`` on 127.0.0.1 by default, from a thread, and with
``replication=True`` the ``/replication/v1/...`` endpoints (replication.py,
imported only then). prometheus_client is imported here only, when metrics
are asked for.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .errors import ConfigError


class StoreCollector:
    """A prometheus_client collector reading one store at scrape time."""

    def __init__(self, store):
        self._store = store

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: F401

        s = self._store
        labels = ["store"]
        at = [s.path]

        def gauge(name, doc, value, extra=None):
            g = GaugeMetricFamily(name, doc, labels=labels + list(extra or {}))
            g.add_metric(at + list((extra or {}).values()), value)
            return g

        report = getattr(s, "warmup_report", None) or {"phases": [], "total_s": 0.0}
        phases = GaugeMetricFamily("rehydrate_warmup_phase_seconds",
                                   "seconds each warmup phase of the last open took",
                                   labels=labels + ["phase"])
        for p in report["phases"]:
            phases.add_metric(at + [p["name"]], p["duration_s"])
        yield phases
        yield gauge("rehydrate_warmup_seconds", "seconds the last open took", report["total_s"])
        replay = next((p for p in report["phases"] if p["name"] == "replay"), {})
        yield gauge("rehydrate_replay_records", "records the last open replayed",
                    replay.get("records", 0))
        yield gauge("rehydrate_replay_bytes", "log bytes the last open read",
                    replay.get("bytes", 0))
        yield gauge("rehydrate_replay_records_per_second", "replay rate of the last open",
                    replay.get("rate", 0.0))
        yield gauge("rehydrate_ready", "1 once the store is open and warm", 1.0 if
                    s.readiness()["ready"] else 0.0)
        yield gauge("rehydrate_last_lsn", "LSN of the last write applied", s.lsn)
        yield gauge("rehydrate_durable_lsn", "every write up to this LSN survives power loss",
                    s.durable_lsn)
        role = s.role
        yield gauge("rehydrate_pending_writes", "writes applied but not yet durable",
                    max(0, s.lsn - s.durable_lsn) if role == "primary" else 0)
        # Replication (docs/replication.md): the role as a 0/1 gauge per
        # role, the epoch, and a standby's lag and follower state.
        roles = GaugeMetricFamily("rehydrate_role", "1 for this store's role",
                                  labels=labels + ["role"])
        for r in ("primary", "standby", "reader", "moved"):
            roles.add_metric(at + [r], 1.0 if r == role else 0.0)
        yield roles
        yield gauge("rehydrate_epoch", "the generation of the directory's writer", s.epoch)
        lag = s.lag
        yield gauge("rehydrate_standby_lag_records",
                    "records the primary wrote that this standby has not applied",
                    lag["records"])
        yield gauge("rehydrate_standby_lag_seconds",
                    "how long this standby has been behind the primary (0: caught up)",
                    lag["seconds"])
        states = GaugeMetricFamily("rehydrate_standby_state",
                                   "1 for a standby's follower state",
                                   labels=labels + ["state"])
        if role in ("standby", "reader"):
            for st in ("catching_up", "following", "stalled", "failed", "stopped"):
                states.add_metric(at + [st], 1.0 if st == lag["state"] else 0.0)
        yield states
        ready = s.readiness()
        yield gauge("rehydrate_warmup_progress", "how far the open is, 0..1",
                    ready["progress"])
        yield gauge("rehydrate_intake_pending_records",
                    "writes taken during a background open, waiting for their table",
                    ready.get("pending_records", 0))
        yield gauge("rehydrate_intake_pending_bytes",
                    "bytes of the writes waiting for their table", ready.get("pending_bytes", 0))
        tables = ready.get("tables")
        yield gauge("rehydrate_tables_ready", "tables whose state is in",
                    sum(tables.values()) if tables is not None else len(s.tables()))
        problems = CounterMetricFamily("rehydrate_recovery_problems",
                                       "problems the last open's recovery found, by kind",
                                       labels=labels + ["kind"])
        for kind, n in sorted(Counter(p.kind for p in s.recovery_report.problems).items()):
            problems.add_metric(at + [kind], n)
        yield problems
        cp = s.checkpoint_stats
        yield _counter("rehydrate_checkpoints", "checkpoints written since open", at,
                       cp["count"])
        yield gauge("rehydrate_checkpoint_seconds", "duration of the last checkpoint",
                    cp["last_duration_s"])
        yield gauge("rehydrate_checkpoint_pause_seconds",
                    "how long the last checkpoint paused writers", cp["last_pause_s"])
        yield gauge("rehydrate_checkpoint_lsn", "LSN of the last checkpoint", cp["last_lsn"])
        arch = s.archive_status
        if arch is not None:
            # The archive (docs/archive.md): how far behind it is, and what
            # it cost, by request kind.
            yield gauge("rehydrate_archive_lsn", "the last LSN the archive holds",
                        arch["archived_lsn"])
            yield gauge("rehydrate_archive_lag_records",
                        "records written that the archive does not hold yet",
                        arch["lag_records"])
            yield gauge("rehydrate_archive_lag_seconds",
                        "age of the oldest write the archive does not hold (0: caught up)",
                        arch["lag_seconds"])
            astates = GaugeMetricFamily("rehydrate_archive_state", "1 for the archiver's state",
                                        labels=labels + ["state"])
            for st in ("starting", "ok", "retrying", "failed", "stopped"):
                astates.add_metric(at + [st], 1.0 if st == arch["state"] else 0.0)
            yield astates
            reqs = CounterMetricFamily("rehydrate_archive_requests",
                                       "requests to the object store, by kind",
                                       labels=labels + ["kind"])
            fails = CounterMetricFamily("rehydrate_archive_request_failures",
                                        "requests to the object store that failed, by kind",
                                        labels=labels + ["kind"])
            for kind in sorted(arch["requests"]):
                reqs.add_metric(at + [kind], arch["requests"][kind])
                fails.add_metric(at + [kind], arch["failures"][kind])
            yield reqs
            yield fails
            yield _counter("rehydrate_archive_bytes_uploaded",
                           "bytes sent to the object store", at, arch["bytes_up"])
            yield _counter("rehydrate_archive_failed_passes",
                           "upload passes that failed (each retried after a backoff)", at,
                           arch["pass_failures"])


def _counter(name, doc, at, value):
    from prometheus_client.core import CounterMetricFamily

    c = CounterMetricFamily(name, doc, labels=["store"])
    c.add_metric(at, value)
    return c


def register(store, registry=None):
    """The store's collector registered in ``registry`` (a new one if None)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry() if registry is None else registry
    registry.register(StoreCollector(store))
    return registry


class ReadinessServer:
    """``/readyz`` (200 when ready, else 503; JSON progress either way),
    ``/livez`` (200 while the store is sound, 503 once it failed),
    ``/metrics`` (Prometheus text); anything else 404. ``port``, ``close()``.

    ``replication=(source, token)`` (a ``replication.Source``) adds the
    replication endpoints (docs/replication.md); it needs a token or an
    ``ssl_context`` that verifies client certificates (ConfigError, checked
    before the port is bound). ``ssl_context`` serves HTTPS: each
    connection's TLS handshake runs on its own thread, so a client that
    stalls in it holds up no other.

    It serves from the process that started it: a forked child's copy has
    no serving thread, and its copy of the listening socket is closed at
    the fork (so the port is the parent's alone, and goes with it); its
    ``close()`` is then a no-op.
    """

    def __init__(self, store, host: str, port: int, registry, replication=None,
                 ssl_context=None):
        self._replication = None
        if replication is not None:
            from .replication import Endpoints, check_config

            source, token = replication
            check_config(token, ssl_context)
            self._replication = Endpoints(source, token)
        elif ssl_context is not None:
            import ssl

            if not isinstance(ssl_context, ssl.SSLContext):
                raise ConfigError("ssl_context must be an ssl.SSLContext")
        handler = _handler(store, registry, self._replication)
        try:
            self._httpd = _Server((host, port), handler)
        except OSError as e:
            raise ConfigError(f"cannot serve on {host}:{port}: {e.strerror or e}") from e
        self._httpd.ssl_context = ssl_context
        self._owner_pid = os.getpid()
        _SERVERS.add(self)
        self._httpd.daemon_threads = True
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name=f"rehydrate-http:{self.port}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if os.getpid() != self._owner_pid:
            # shutdown() would wait forever for the serving thread, which
            # stayed in the parent.
            self._forget()
            return
        _SERVERS.discard(self)
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        if self._replication is not None:
            self._replication.close()  # the log streams end (END "shutdown")

    def _forget(self) -> None:
        """Close this process's copy of the listening socket, nothing else."""
        self._httpd.socket.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer, with TLS when ``ssl_context`` is set: the
    handshake runs on the connection's thread (with a timeout), not on the
    thread that accepts."""

    ssl_context = None

    def get_request(self):
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            sock.settimeout(_HANDSHAKE_S)
            try:
                sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                    do_handshake_on_connect=False)
            except OSError:
                sock.close()
                raise
        return sock, addr

    def finish_request(self, request, client_address):
        if self.ssl_context is not None:
            try:
                request.do_handshake()
            except (OSError, ValueError):
                return  # not TLS, or not a client we verify: the connection closes
            request.settimeout(None)
        super().finish_request(request, client_address)


_HANDSHAKE_S = 10.0


def _handler(store, registry, replication=None):
    class Handler(BaseHTTPRequestHandler):
        # A stalled client times out instead of holding a thread for good
        # (the log stream writes at least once a second).
        timeout = 60.0 if replication is not None else None

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data: dict) -> None:
            self._send(code, json.dumps(data).encode(), "application/json")

        def do_GET(self):  # noqa: N802 - http.server's name
            path, _, query = self.path.partition("?")
            if replication is not None and path.startswith(_REPLICATION):
                replication.get(self, path, query)
            elif path == "/readyz":
                r = store.readiness()
                self._json(200 if r["ready"] else 503, r)
            elif path == "/livez":
                failed = store.failed
                self._json(503 if failed else 200,
                           {"live": not failed, "error": repr(failed) if failed else None})
            elif path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._json(404, {"error": f"no such path {path!r}",
                                 "paths": ["/readyz", "/livez", "/metrics"]})

        def do_POST(self):  # noqa: N802 - http.server's name
            path = self.path.partition("?")[0]
            if replication is not None and path.startswith(_REPLICATION):
                replication.post(self, path)
            else:
                self._json(404, {"error": f"no such path {path!r}"})

        def log_message(self, fmt, *args) -> None:  # quiet: no stderr per request
            pass

    return Handler


_REPLICATION = "/replication/v1/"  # replication.PREFIX, without importing it

# The servers of this process (weak), for the fork hook below.
_SERVERS: "weakref.WeakSet[ReadinessServer]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for server in list(_SERVERS):
        server._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
