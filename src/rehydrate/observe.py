"""Observability: Prometheus metrics of stores and their readiness over HTTP
(docs/observability.md).

Metrics are read from the stores when scraped (a collector, nothing counted
on the write path): the warmup's phases, replay records, bytes and rate,
writes not yet durable, problems by kind, last and durable LSN, the last
checkpoint, replication and the archive. One collector per registry holds
every store registered in it (weakly), each sample labelled ``store`` (the
directory), so several stores share a registry.

``/readyz``, ``/livez`` and ``/metrics`` are answered by one function,
``respond()``, free of any HTTP framework; three servers speak it: the
threaded server of ``store.serve_http()`` (which, with
``replication=True``, also serves the ``/replication/v1/...`` endpoints of
replication.py, imported only then), an ASGI3 app and a WSGI app to mount
in a web framework. prometheus_client is imported here only, when metrics
are asked for.
"""

from __future__ import annotations

import http
import json
import os
import threading
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote
from typing import Any, Optional

from .errors import ConfigError

# -- metrics ------------------------------------------------------------------

# Every family a collector may yield: name -> (type, help, labels besides
# "store"). A counter's samples are named NAME_total.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "rehydrate_warmup_phase_seconds": (
        "gauge", "seconds each warmup phase of the last open took", ("phase",)),
    "rehydrate_warmup_seconds": ("gauge", "seconds the last open took", ()),
    "rehydrate_replay_records": ("gauge", "records the last open replayed", ()),
    "rehydrate_replay_bytes": ("gauge", "log bytes the last open read", ()),
    "rehydrate_replay_records_per_second": ("gauge", "replay rate of the last open", ()),
    "rehydrate_ready": ("gauge", "1 once the store is open and warm", ()),
    # The warmup's hook retries and the crash-loop guard (docs/warmup.md).
    "rehydrate_hook_retries": (
        "counter", "tries of populate and prime hooks after a retryable error", ("phase",)),
    "rehydrate_degraded": (
        "gauge", "1 while the store runs in safe mode (a failing step left out)", ()),
    "rehydrate_failed_opens": (
        "gauge", "failed opens recorded since the last full open", ()),
    "rehydrate_last_lsn": ("gauge", "LSN of the last write applied", ()),
    "rehydrate_durable_lsn": (
        "gauge", "every write up to this LSN survives power loss", ()),
    "rehydrate_pending_writes": ("gauge", "writes applied but not yet durable", ()),
    "rehydrate_role": ("gauge", "1 for this store's role", ("role",)),
    "rehydrate_epoch": ("gauge", "the generation of the directory's writer", ()),
    "rehydrate_standby_lag_records": (
        "gauge", "records the primary wrote that this standby has not applied", ()),
    "rehydrate_standby_lag_seconds": (
        "gauge", "how long this standby has been behind the primary (0: caught up)", ()),
    "rehydrate_standby_state": ("gauge", "1 for a standby's follower state", ("state",)),
    "rehydrate_warmup_progress": ("gauge", "how far the open is, 0..1", ()),
    "rehydrate_intake_pending_records": (
        "gauge", "writes taken during a background open, waiting for their table", ()),
    "rehydrate_intake_pending_bytes": (
        "gauge", "bytes of the writes waiting for their table", ()),
    "rehydrate_tables_ready": ("gauge", "tables whose state is in", ()),
    "rehydrate_gate_open": (
        "gauge", "1 while the feature gate is open (docs/warmup.md)", ("gate",)),
    "rehydrate_recovery_problems": (
        "counter", "problems the last open's recovery found, by kind", ("kind",)),
    "rehydrate_checkpoints": ("counter", "checkpoints written since open", ()),
    "rehydrate_checkpoint_seconds": ("gauge", "duration of the last checkpoint", ()),
    "rehydrate_checkpoint_pause_seconds": (
        "gauge", "how long the last checkpoint paused writers", ()),
    "rehydrate_checkpoint_lsn": ("gauge", "LSN of the last checkpoint", ()),
    # The archive (docs/archive.md), for a store that has one: how far
    # behind it is, and what it cost, by request kind.
    "rehydrate_archive_lsn": ("gauge", "the last LSN the archive holds", ()),
    "rehydrate_archive_lag_records": (
        "gauge", "records written that the archive does not hold yet", ()),
    "rehydrate_archive_lag_seconds": (
        "gauge", "age of the oldest write the archive does not hold (0: caught up)", ()),
    "rehydrate_archive_state": ("gauge", "1 for the archiver's state", ("state",)),
    "rehydrate_archive_requests": (
        "counter", "requests to the object store, by kind", ("kind",)),
    "rehydrate_archive_request_failures": (
        "counter", "requests to the object store that failed, by kind", ("kind",)),
    "rehydrate_archive_bytes_uploaded": ("counter", "bytes sent to the object store", ()),
    "rehydrate_archive_failed_passes": (
        "counter", "upload passes that failed (each retried after a backoff)", ()),
    # Online migrations (docs/migrations.md, "Routing and automatic revert"):
    # one set per migration id (the latest run of each), so few series.
    "rehydrate_migration_reads": (
        "counter", "reads of a migrating table, by path (old table or shadow)",
        ("migration", "path")),
    "rehydrate_migration_errors": (
        "counter", "reads whose path failed (new: the record's migration raised)",
        ("migration", "path")),
    "rehydrate_migration_divergences": (
        "counter", "compared reads whose old and new values disagreed", ("migration",)),
    "rehydrate_migration_compare_errors": (
        "counter", "compared reads whose compare function raised", ("migration",)),
    "rehydrate_migration_read_latency_seconds": (
        "gauge", "read latency of a path over its recent reads, by quantile",
        ("migration", "path", "quantile")),
    "rehydrate_migration_fraction": (
        "gauge", "share of the table's keys read from the shadow, 0..1", ("migration",)),
    "rehydrate_migration_progress": (
        "gauge", "how far the shadow's build is, 0..1", ("migration",)),
    "rehydrate_migration_state": (
        "gauge", "1 for the online migration's state", ("migration", "state")),
    "rehydrate_migration_reverts": (
        "counter", "1 once the online migration was reverted", ("migration",)),
}

_ROLES = ("primary", "standby", "reader", "moved")
_FOLLOW_STATES = ("catching_up", "following", "stalled", "failed", "stopped")
_ARCHIVE_STATES = ("starting", "ok", "retrying", "failed", "stopped")
MIGRATION_STATES = ("building", "caught_up", "reverted", "completed")
_MIGRATION_PATHS = ("old", "new")
_QUANTILES = (("0.5", "latency_p50_s"), ("0.99", "latency_p99_s"))

Sample = tuple[str, tuple[str, ...], float]  # family, its extra label values, value


def samples(store: Any) -> list[Sample]:
    """The samples of one store, read now (no ``store`` label yet)."""
    s = store
    out: list[Sample] = []

    def add(name: str, value: float, *extra: str) -> None:
        out.append((name, extra, float(value)))

    report = s.warmup_report or {"phases": [], "total_s": 0.0}
    for p in report["phases"]:
        add("rehydrate_warmup_phase_seconds", p["duration_s"], p["name"])
    add("rehydrate_warmup_seconds", report["total_s"])
    replay: dict[str, Any] = next((p for p in report["phases"] if p["name"] == "replay"), {})
    add("rehydrate_replay_records", replay.get("records", 0))
    add("rehydrate_replay_bytes", replay.get("bytes", 0))
    add("rehydrate_replay_records_per_second", replay.get("rate", 0.0))
    ready = s.readiness()
    add("rehydrate_ready", 1.0 if ready["ready"] else 0.0)
    for p in report["phases"]:
        if "retries" in p:
            add("rehydrate_hook_retries", p["retries"], p["name"])
    add("rehydrate_degraded", 1.0 if ready.get("degraded") else 0.0)
    add("rehydrate_failed_opens", report.get("failed_opens", 0))
    add("rehydrate_last_lsn", s.lsn)
    add("rehydrate_durable_lsn", s.durable_lsn)
    role = s.role
    add("rehydrate_pending_writes", max(0, s.lsn - s.durable_lsn) if role == "primary" else 0)
    # Replication (docs/replication.md): the role as a 0/1 gauge per role,
    # the epoch, and a standby's lag and follower state.
    for r in _ROLES:
        add("rehydrate_role", 1.0 if r == role else 0.0, r)
    add("rehydrate_epoch", s.epoch)
    lag = s.lag
    add("rehydrate_standby_lag_records", lag["records"])
    add("rehydrate_standby_lag_seconds", lag["seconds"])
    if role in ("standby", "reader"):
        for st in _FOLLOW_STATES:
            add("rehydrate_standby_state", 1.0 if st == lag["state"] else 0.0, st)
    add("rehydrate_warmup_progress", ready["progress"])
    add("rehydrate_intake_pending_records", ready.get("pending_records", 0))
    add("rehydrate_intake_pending_bytes", ready.get("pending_bytes", 0))
    tables = ready.get("tables")
    add("rehydrate_tables_ready", sum(tables.values()) if tables is not None else len(s.tables()))
    for gate, state in sorted(ready.get("gates", {}).items()):
        add("rehydrate_gate_open", 1.0 if state["open"] else 0.0, gate)
    for kind, n in sorted(Counter(p.kind for p in s.recovery_report.problems).items()):
        add("rehydrate_recovery_problems", n, kind)
    cp = s.checkpoint_stats
    add("rehydrate_checkpoints", cp["count"])
    add("rehydrate_checkpoint_seconds", cp["last_duration_s"])
    add("rehydrate_checkpoint_pause_seconds", cp["last_pause_s"])
    add("rehydrate_checkpoint_lsn", cp["last_lsn"])
    arch = s.archive_status
    if arch is not None:
        add("rehydrate_archive_lsn", arch["archived_lsn"])
        add("rehydrate_archive_lag_records", arch["lag_records"])
        add("rehydrate_archive_lag_seconds", arch["lag_seconds"])
        for st in _ARCHIVE_STATES:
            add("rehydrate_archive_state", 1.0 if st == arch["state"] else 0.0, st)
        for kind in sorted(arch["requests"]):
            add("rehydrate_archive_requests", arch["requests"][kind], kind)
            add("rehydrate_archive_request_failures", arch["failures"][kind], kind)
        add("rehydrate_archive_bytes_uploaded", arch["bytes_up"])
        add("rehydrate_archive_failed_passes", arch["pass_failures"])
    out.extend(migration_samples(migration_statuses(s)))
    return out


def migration_statuses(store: Any) -> list[dict[str, Any]]:
    """``store.migrations_status()``, or [] for a store without online
    migrations."""
    runs = getattr(store, "migrations_status", None)
    return list(runs()) if callable(runs) else []


def latest_runs(statuses: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One status per migration id, the latest run's (highest "run"; a live
    one over a recorded one of the same number), in id order: the runs the
    metrics show, one series set per id however often it was run."""
    best: dict[str, Mapping[str, Any]] = {}
    for st in statuses:
        mid = st.get("id")
        if not isinstance(mid, str):
            continue
        prev = best.get(mid)
        if prev is None or _run_no(st) >= _run_no(prev):
            best[mid] = st
    return [best[k] for k in sorted(best)]


def _run_no(st: Mapping[str, Any]) -> int:
    run = st.get("run")
    return run if isinstance(run, int) else 0


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


def migration_samples(statuses: Iterable[Mapping[str, Any]]) -> list[Sample]:
    """The online-migration samples of the status dicts of one store's runs
    (the engine's documented shape; a field missing counts 0)."""
    out: list[Sample] = []
    for st in latest_runs(statuses):
        mid = st["id"]
        paths = st.get("paths") or {}
        for path in _MIGRATION_PATHS:
            p = paths.get(path) or {}
            out.append(("rehydrate_migration_reads", (mid, path), _num(p.get("reads"))))
            out.append(("rehydrate_migration_errors", (mid, path), _num(p.get("errors"))))
            for q, field in _QUANTILES:
                v = p.get(field)
                if v is not None:
                    out.append(("rehydrate_migration_read_latency_seconds", (mid, path, q),
                                _num(v)))
        out.append(("rehydrate_migration_divergences", (mid,), _num(st.get("divergences"))))
        out.append(("rehydrate_migration_compare_errors", (mid,),
                    _num(st.get("compare_errors"))))
        out.append(("rehydrate_migration_fraction", (mid,), _num(st.get("fraction"))))
        out.append(("rehydrate_migration_progress", (mid,), _num(st.get("progress"))))
        state = st.get("state")
        for name in MIGRATION_STATES:
            out.append(("rehydrate_migration_state", (mid, name), 1.0 if state == name else 0.0))
        out.append(("rehydrate_migration_reverts", (mid,), 1.0 if state == "reverted" else 0.0))
    return out


def _family(name: str) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    kind, doc, extra = FAMILIES[name]
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name, doc, labels=["store", *extra])


class StoresCollector:
    """A prometheus_client collector reading, at scrape time, every store
    registered in it: each family has one sample (set) per store, labelled
    ``store``. Stores are held weakly, and one closed is dropped: its
    samples are gone from the next scrape on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: list[weakref.ref[Any]] = []

    def add(self, store: Any) -> None:
        """Hold ``store`` (again: nothing). ConfigError when another open
        store with the same directory is here: their samples would be the
        same series."""
        with self._lock:
            live = self._live()
            if any(s is store for s in live):
                return
            for s in live:
                if s.path == store.path:
                    raise ConfigError(
                        f"another open store of {store.path!r} is in this registry already; "
                        "give each its own registry")
            self._stores.append(weakref.ref(store))

    def stores(self) -> list[Any]:
        """The stores held, open ones only, in the order they came."""
        with self._lock:
            return self._live()

    def _live(self) -> list[Any]:
        live = []
        for ref in self._stores:
            s = ref()
            if s is not None and not s.closed:
                live.append(s)
        self._stores = [weakref.ref(s) for s in live]
        return live

    def describe(self) -> Iterator[Any]:
        # Every family, empty: what a registry checks for duplicate names,
        # without reading any store.
        for name in FAMILIES:
            yield _family(name)

    def collect(self) -> Iterator[Any]:
        families: dict[str, Any] = {}
        for store in self.stores():
            at = store.path
            for name, extra, value in samples(store):
                if name not in families:
                    families[name] = _family(name)
                families[name].add_metric([at, *extra], value)
        # In FAMILIES' order, whatever order the stores yielded them in.
        for name in FAMILIES:
            if name in families:
                yield families[name]


# registry -> its collector; an entry goes with its registry.
_COLLECTORS: "weakref.WeakKeyDictionary[Any, StoresCollector]" = weakref.WeakKeyDictionary()
_COLLECTORS_LOCK = threading.Lock()


def register(store: Any, registry: Any = None) -> Any:
    """``registry`` (a new ``CollectorRegistry`` if None) with ``store``'s
    metrics in it. One collector per registry holds all its stores, so
    registering several stores in one registry (the default
    ``prometheus_client.REGISTRY`` too) is fine, and registering one twice
    does nothing."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry() if registry is None else registry
    with _COLLECTORS_LOCK:
        try:
            collector = _COLLECTORS.get(registry)
        except TypeError:
            raise ConfigError(
                f"registry must be a prometheus_client CollectorRegistry, not {registry!r}"
            ) from None
        if collector is None:
            collector = StoresCollector()
            try:
                registry.register(collector)
            except (AttributeError, ValueError) as e:
                # ValueError: another collector there already has these names.
                raise ConfigError(f"cannot add rehydrate metrics to {registry!r}: {e}") from e
            _COLLECTORS[registry] = collector
    collector.add(store)
    return registry


def collector_of(registry: Any) -> Optional[StoresCollector]:
    """The collector of rehydrate metrics in ``registry``, if any."""
    with _COLLECTORS_LOCK:
        return _COLLECTORS.get(registry)


# -- the probes, free of any HTTP framework ------------------------------------

PATHS = ("/readyz", "/livez", "/metrics", "/migrations")
_MIGRATIONS = "/migrations/"  # + an id: one run
_ALLOW = "GET, HEAD"
_JSON = "application/json"


@dataclass(frozen=True)
class Response:
    """What to answer: a status, headers (Content-Type and Content-Length
    among them) and a body (empty for HEAD, Content-Length as for GET)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def status_line(self) -> str:
        return f"{self.status} {http.HTTPStatus(self.status).phrase}"


def respond(stores: tuple[Any, ...], registry: Any, method: str, path: str,
            accept: Optional[str] = None) -> Response:
    """The answer to ``method path`` (``path`` relative to where the probes
    are mounted, no query string).

    ``/migrations``: the online-migration runs the store knows, a JSON list
    of status dicts (several stores: each with ``"store"``);
    ``/migrations/<id>``: the latest run of that id, 404 when none.

    ``/readyz``: 200 when ready, else 503, ``store.readiness()`` as JSON;
    for several stores ``{"ready": every one is, "stores": {path:
    readiness}}``. ``/livez``: 200 while sound, 503 once failed (several:
    ``{"live": every one is, "stores": {path: {"live", "error"}}}``).
    ``/metrics``: ``registry`` in OpenMetrics text when ``accept`` asks for
    ``application/openmetrics-text``, else in Prometheus text. Another
    method than GET or HEAD on these is 405; any other path 404.

    All of it is a read of memory (readiness is a few fields under the
    store's lock, metrics a collector's read of counters), so it is fine to
    call from an event loop.
    """
    extra: tuple[tuple[str, str], ...] = ()
    one = path[len(_MIGRATIONS):] if path.startswith(_MIGRATIONS) else None
    if one is not None and method in ("GET", "HEAD"):
        status, data = _migration(stores, unquote(one))
        ctype, body = _JSON, _dumps(data)
    elif path not in PATHS and one is None:
        status, ctype, body = 404, _JSON, _dumps(
            {"error": f"no such path {path!r}", "paths": list(PATHS)})
    elif method not in ("GET", "HEAD"):
        status, ctype, body = 405, _JSON, _dumps(
            {"error": f"method {method} not allowed on {path}", "allow": ["GET", "HEAD"]})
        extra = (("Allow", _ALLOW),)
    elif path == "/metrics":
        from prometheus_client.exposition import choose_encoder

        encode, ctype = choose_encoder(accept or "")
        status, body = 200, encode(registry)
    elif path == "/migrations":
        status, ctype, body = 200, _JSON, json.dumps(_migrations(stores)).encode()
    elif path == "/readyz":
        status, data = _readyz(stores)
        ctype, body = _JSON, _dumps(data)
    else:
        status, data = _livez(stores)
        ctype, body = _JSON, _dumps(data)
    headers = (("Content-Type", ctype), ("Content-Length", str(len(body))), *extra)
    return Response(status, headers, b"" if method == "HEAD" else body)


def _migrations(stores: tuple[Any, ...]) -> list[dict[str, Any]]:
    # Every run each store knows; with several stores each says whose it is.
    if len(stores) == 1:
        return migration_statuses(stores[0])
    return [dict(st, store=s.path) for s in stores for st in migration_statuses(s)]


def _migration(stores: tuple[Any, ...], mid: str) -> tuple[int, dict[str, Any]]:
    # The latest run of ``mid`` (the first store's that has one).
    for s in stores:
        for st in latest_runs(migration_statuses(s)):
            if st["id"] == mid:
                return 200, (dict(st) if len(stores) == 1 else dict(st, store=s.path))
    return 404, {"error": f"no online migration run {mid!r}"}


def _dumps(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data).encode()


def _serving(r: Mapping[str, Any]) -> bool:
    """Whether ``/readyz`` says 200 for this readiness: ready, and not in
    safe mode under ``degraded_readyz=503`` (docs/warmup.md)."""
    return bool(r["ready"]) and not (r.get("degraded") and r.get("degraded_readyz") == 503)


def _readyz(stores: tuple[Any, ...]) -> tuple[int, dict[str, Any]]:
    if len(stores) == 1:
        r: dict[str, Any] = stores[0].readiness()
        return (200 if _serving(r) else 503), r
    each = {s.path: s.readiness() for s in stores}
    ready = all(_serving(r) for r in each.values())
    return (200 if ready else 503), {"ready": ready, "stores": each}


def _live(store: Any) -> dict[str, Any]:
    failed = store.failed
    return {"live": not failed, "error": repr(failed) if failed else None}


def _livez(stores: tuple[Any, ...]) -> tuple[int, dict[str, Any]]:
    if len(stores) == 1:
        out = _live(stores[0])
    else:
        each = {s.path: _live(s) for s in stores}
        out = {"live": all(r["live"] for r in each.values()), "stores": each}
    return (200 if out["live"] else 503), out


def _probed(stores: Iterable[Any], registry: Any) -> tuple[tuple[Any, ...], Any]:
    """The stores (each once, in order) and the registry they are all in
    (a new one if None); ConfigError for no store."""
    unique: list[Any] = []
    for s in stores:
        if not any(s is u for u in unique):
            unique.append(s)
    if not unique:
        raise ConfigError("probes need at least one store")
    for s in unique:
        registry = register(s, registry)
    return tuple(unique), registry


# -- ASGI and WSGI --------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AsgiApp:
    """An ASGI3 app answering ``respond()`` (no framework needed): mount it,
    e.g. ``app.mount("/rehydrate", store.asgi_app())`` in Starlette or
    FastAPI. The path routed is the request's path less ``root_path`` (the
    mount point, as Starlette and ``uvicorn --root-path`` set it). It
    completes ``lifespan`` startup and shutdown, and refuses a websocket.
    It answers inline: see ``respond()``."""

    def __init__(self, stores: tuple[Any, ...], registry: Any) -> None:
        self.stores, self.registry = stores, registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            headers = scope.get("headers") or ()
            accept = ", ".join(v.decode("latin-1") for k, v in headers
                               if k.lower() == b"accept")
            r = respond(self.stores, self.registry, scope["method"], _route_path(scope),
                        accept)
            await send({"type": "http.response.start", "status": r.status,
                        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                    for k, v in r.headers]})
            await send({"type": "http.response.body", "body": r.body})
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: 403
        else:
            raise ConfigError(f"an ASGI scope of type {kind!r} is not served here")


def _route_path(scope: Scope) -> str:
    """``path`` less ``root_path`` where it starts with it: servers and
    frameworks differ on whether ``path`` still holds the mount point
    (ASGI says it does; older Starlette stripped it)."""
    path: str = scope["path"]
    root: str = scope.get("root_path") or ""
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):]
    return path


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class WsgiApp:
    """A WSGI app answering ``respond()``: it routes ``PATH_INFO`` (what is
    left below ``SCRIPT_NAME``, the mount point), so it mounts under a
    prefix with werkzeug's DispatcherMiddleware, in Flask or Django."""

    def __init__(self, stores: tuple[Any, ...], registry: Any) -> None:
        self.stores, self.registry = stores, registry

    def __call__(self, environ: Mapping[str, Any], start_response: StartResponse
                 ) -> list[bytes]:
        r = respond(self.stores, self.registry, environ.get("REQUEST_METHOD", "GET"),
                    environ.get("PATH_INFO") or "", environ.get("HTTP_ACCEPT"))
        start_response(r.status_line, list(r.headers))
        return [r.body]


def asgi_app(*stores: Any, registry: Any = None) -> AsgiApp:
    """An ASGI app serving the probes of ``stores`` (at least one) and the
    metrics of ``registry``, where each store is registered (a new registry
    when None). With several stores, ``/readyz`` is 200 only when every one
    is ready and ``/livez`` only while every one is sound."""
    return AsgiApp(*_probed(stores, registry))


def wsgi_app(*stores: Any, registry: Any = None) -> WsgiApp:
    """The WSGI twin of ``asgi_app()``."""
    return WsgiApp(*_probed(stores, registry))


# -- the threaded server of serve_http() ----------------------------------------

class ReadinessServer:
    """``/readyz`` (200 when ready, else 503; JSON progress either way),
    ``/livez`` (200 while the store is sound, 503 once it failed),
    ``/metrics`` (Prometheus or OpenMetrics text); another method 405,
    anything else 404 (``respond()``). ``port``, ``close()``.

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

    def __init__(self, store: Any, host: str, port: int, registry: Any,
                 replication: Any = None, ssl_context: Any = None) -> None:
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

    def __enter__(self) -> ReadinessServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer, with TLS when ``ssl_context`` is set: the
    handshake runs on the connection's thread (with a timeout), not on the
    thread that accepts."""

    ssl_context: Any = None

    def get_request(self) -> tuple[Any, Any]:
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

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is not None:
            try:
                request.do_handshake()
            except (OSError, ValueError):
                return  # not TLS, or not a client we verify: the connection closes
            request.settimeout(None)
        super().finish_request(request, client_address)


_HANDSHAKE_S = 10.0


def _handler(store: Any, registry: Any, replication: Any = None) -> type[BaseHTTPRequestHandler]:
    stores = (store,)

    class Handler(BaseHTTPRequestHandler):
        # A stalled client times out instead of holding a thread for good
        # (the log stream writes at least once a second).
        timeout = 60.0 if replication is not None else None

        def _probe(self, path: str) -> None:
            r = respond(stores, registry, self.command, path, self.headers.get("Accept"))
            self.send_response(r.status)
            for name, value in r.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(r.body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path, _, query = self.path.partition("?")
            if replication is not None and path.startswith(_REPLICATION):
                replication.get(self, path, query)
            else:
                self._probe(path)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.partition("?")[0]
            if replication is not None and path.startswith(_REPLICATION):
                replication.post(self, path)
            else:
                self._probe(path)

        def _other(self) -> None:
            self._probe(self.path.partition("?")[0])

        do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # quiet: no stderr per request
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
