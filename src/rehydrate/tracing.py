"""OpenTelemetry spans for opens, checkpoints, handoffs, restores and
online migrations (docs/observability.md, "Traces").

When ``opentelemetry-api`` is installed, an open is a ``rehydrate.open``
span under the caller's current span, with a child span per warmup phase
(``rehydrate.warmup.<phase>``); checkpoints, promotes and archive restores
get a span each. Spans go to the global tracer provider
(``opentelemetry.trace.set_tracer_provider``), as other instrumented
libraries' do; without one set, the API's no-op provider drops them.

When it is not installed, every helper here is a no-op and nothing is
imported: whether it is there is asked once, at first use, with
``importlib.util.find_spec`` (which imports nothing of it), so neither
``import rehydrate`` nor an open loads ``opentelemetry``.

Attribute names carry a ``rehydrate.`` prefix. A phase span's attributes
are set from the phase's entry in ``warmup_report`` when it ends, so the
trace and the report say the same.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Optional, TypeVar

TRACER_NAME = "rehydrate"
PREFIX = "rehydrate."
# A log damaged in many places (skip-corrupted) could report thousands of
# problems: the span counts them all and keeps an event for the first few.
MAX_PROBLEM_EVENTS = 32
# Phase entry fields set on the phase's span as rehydrate.<name>; "lsn"
# (the snapshot phase's) is renamed, "duration_s" is "actual_s".
_PHASE_FIELDS = ("records", "bytes", "rate", "hooks", "writes_taken_after_s",
                 "predicted_peak_bytes")

_probe_lock = threading.Lock()
_api: Any = None  # the opentelemetry API's modules once found; False when absent

T = TypeVar("T")


def _otel() -> Any:
    """(trace, context, Status, StatusCode) of the OpenTelemetry API, or None
    when it is not installed (asked once per process)."""
    global _api
    api = _api
    if api is None:
        with _probe_lock:
            if _api is None:
                _api = _load()
            api = _api
    return api or None


def _load() -> Any:
    try:
        if importlib.util.find_spec("opentelemetry") is None \
                or importlib.util.find_spec("opentelemetry.trace") is None:
            return False
    except (ImportError, ValueError):  # a broken or half-installed package
        return False
    try:
        from opentelemetry import context, trace
        from opentelemetry.trace import Status, StatusCode
    except ImportError:
        return False
    return (trace, context, Status, StatusCode)


def enabled() -> bool:
    """Whether spans are made: the OpenTelemetry API is installed."""
    return _otel() is not None


def _tracer(api: Any) -> Any:
    from . import __version__

    # Asked for each time rather than kept: a provider set after the first
    # span (a service configures tracing after importing us) is then used.
    return api[0].get_tracer(TRACER_NAME, __version__)


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` under the prefix, as span attributes take them: None is
    left out, other kinds than str, bool, int and float are written as str."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if v is None:
            continue
        if not isinstance(v, (str, bool, int, float)):
            v = str(v)
        out[PREFIX + k] = v
    return out


def _fail(api: Any, span: Any, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(api[2](api[3].ERROR, f"{type(error).__name__}: {error}"))


class SpanHandle:
    """A span being made: ``set(**values)`` adds ``rehydrate.*`` attributes.
    The one from a no-op ``span()`` ignores them."""

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def set(self, **values: Any) -> None:
        if self._span is not None:
            self._span.set_attributes(_attributes(values))


_NO_SPAN = SpanHandle()


@contextlib.contextmanager
def span(name: str, **values: Any) -> Iterator[SpanHandle]:
    """A span ``name`` around the block, under the current span and current
    inside it; an exception that leaves the block is recorded on it and
    sets its status to ERROR. A no-op without OpenTelemetry."""
    api = _otel()
    if api is None:
        yield _NO_SPAN
        return
    with _current_span(api, name, values) as handle:
        yield handle


@contextlib.contextmanager
def _current_span(api: Any, name: str, values: Mapping[str, Any],
                  context: Any = None) -> Iterator[SpanHandle]:
    """The span, current in the block, under ``context`` (None: the current
    span); an exception leaving the block makes it ERROR."""
    with _tracer(api).start_as_current_span(name, context=context,
                                            attributes=_attributes(values),
                                            record_exception=False,
                                            set_status_on_exception=False) as s:
        try:
            yield SpanHandle(s)
        except BaseException as e:
            _fail(api, s, e)
            raise


class OpenTrace:
    """The spans of one open: ``rehydrate.open`` and a child per phase.

    Made on the thread that calls the open, so the open's span nests under
    that thread's current span even when the phases run on another thread
    (a background open). The no-op one (``NO_TRACE``) is what an open gets
    without OpenTelemetry.
    """

    def __init__(self, api: Any = None, path: str = "", **values: Any) -> None:
        self._api = api
        self._open: Any = None
        self._phase: Any = None
        self._problems = 0
        self._t0 = time.perf_counter()
        if api is not None:
            self._open = _tracer(api).start_span(
                "rehydrate.open", attributes=_attributes({"path": path, **values}))

    # -- the open ------------------------------------------------------------
    def finished(self, **values: Any) -> None:
        """The open is over and the store ready (``values``: lsn, ...)."""
        s = self._open
        if s is None:
            return
        self._open = None
        s.set_attributes(_attributes({**values, "duration_s": time.perf_counter() - self._t0}))
        s.end()

    def failed(self, error: BaseException) -> None:
        """The open failed: the phase it failed in and the open get status
        ERROR with ``error`` recorded."""
        api = self._api
        if api is None:
            return
        phase, self._phase = self._phase, None
        if phase is not None:
            _fail(api, phase, error)
            phase.end()
        s, self._open = self._open, None
        if s is not None:
            _fail(api, s, error)
            s.set_attributes(_attributes({"duration_s": time.perf_counter() - self._t0}))
            s.end()

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """The open's span current on this thread in the block (the thread
        that runs the open): what a hook, a criterion or a migration traces
        nests under it."""
        with self._attached(self._open):
            yield

    # -- phases --------------------------------------------------------------
    def phase_started(self, phase: str) -> None:
        api = self._api
        if api is None or self._open is None:
            return
        if self._phase is not None:  # (never left open: a phase ends before the next)
            self._phase.end()
        self._problems = 0
        self._phase = _tracer(api).start_span(
            f"rehydrate.warmup.{phase}", context=api[0].set_span_in_context(self._open),
            attributes=_attributes({"phase": phase}))

    def phase_stats(self, entry: Mapping[str, Any], predicted_s: Optional[float]) -> None:
        """What the phase did (its ``warmup_report`` entry), set on its span
        before its budget and criteria are judged, so a phase that fails
        them still says how it ran."""
        s = self._phase
        if s is None:
            return
        values = {k: entry[k] for k in _PHASE_FIELDS if k in entry}
        values["actual_s"] = entry.get("duration_s")
        values["predicted_s"] = predicted_s
        if entry.get("name") == "snapshot":
            values["snapshot_lsn"] = entry.get("lsn")
        values["problems"] = self._problems
        if entry.get("migrations") is not None:
            values["migrations"] = len(entry["migrations"])
        s.set_attributes(_attributes(values))

    def phase_ended(self) -> None:
        s, self._phase = self._phase, None
        if s is not None:
            s.end()

    def problem(self, problem: Any) -> None:
        """A recovery problem found in the current phase: counted, and the
        first few kept as ``rehydrate.problem`` events."""
        s = self._phase
        if s is None:
            return
        self._problems += 1
        if self._problems <= MAX_PROBLEM_EVENTS:
            s.add_event("rehydrate.problem", _attributes({
                "kind": getattr(problem, "kind", None), "lsn": getattr(problem, "lsn", None),
                "file": getattr(problem, "path", None),
                "action": getattr(problem, "action", None)}))

    @contextlib.contextmanager
    def in_phase(self) -> Iterator[None]:
        """The current phase's span current on this thread in the block: a
        hook's thread, the migrate phase's steps."""
        with self._attached(self._phase or self._open):
            yield

    def carried(self, fn: Callable[[], T]) -> Callable[[], T]:
        """``fn`` run with the current phase's span current, on whatever
        thread calls it."""
        if self._api is None:
            return fn

        def run() -> T:
            with self.in_phase():
                return fn()
        return run

    @contextlib.contextmanager
    def _attached(self, s: Any) -> Iterator[None]:
        api = self._api
        if api is None or s is None:
            yield
            return
        token = api[1].attach(api[0].set_span_in_context(s))
        try:
            yield
        finally:
            api[1].detach(token)


NO_TRACE = OpenTrace()


def start_open(path: str, **values: Any) -> OpenTrace:
    """The spans of an open of ``path`` starting now under the current span
    (``values``: its mode, ...); ``NO_TRACE`` without OpenTelemetry."""
    api = _otel()
    if api is None:
        return NO_TRACE
    return OpenTrace(api, path, **values)


class MigrationTrace:
    """The spans of one online migration run (docs/observability.md,
    "Traces"): ``rehydrate.migration.build`` from the start to caught_up
    (or the run's end), and a span per step: ``.start``, ``.route``,
    ``.revert`` (status ERROR) and ``.complete``. Every span carries
    ``rehydrate.migration`` and ``rehydrate.table``.

    Made on the thread that starts the run, whose current span (if any) is
    kept: the build span and a revert the run's own thread makes (an
    automatic one) nest under it; a step called on a thread with a span
    current (a route, an abort, the cutover) nests under that one. The
    no-op one (``NO_MIGRATION_TRACE``) is what a run gets without
    OpenTelemetry.
    """

    def __init__(self, api: Any = None, migration: str = "", table: str = "") -> None:
        self._api = api
        self._ids = {"migration": migration, "table": table}
        self._parent: Any = None
        self._build: Any = None
        self._lock = threading.Lock()
        if api is not None:
            self._parent = api[1].get_current()

    def _context(self) -> Any:
        """This thread's context when a span is current in it, else the
        starting caller's."""
        api = self._api
        if api[0].get_current_span().get_span_context().is_valid:
            return api[1].get_current()
        return self._parent

    @contextlib.contextmanager
    def step(self, name: str, **values: Any) -> Iterator[SpanHandle]:
        """The span ``rehydrate.migration.<name>`` around the block (current
        inside it); an exception leaving the block makes it ERROR."""
        api = self._api
        if api is None:
            yield _NO_SPAN
            return
        with _current_span(api, f"rehydrate.migration.{name}", {**self._ids, **values},
                           self._context()) as handle:
            yield handle

    def build_started(self) -> None:
        api = self._api
        if api is None:
            return
        with self._lock:
            if self._build is None:
                self._build = _tracer(api).start_span(
                    "rehydrate.migration.build", context=self._parent,
                    attributes=_attributes(self._ids))

    def build_ended(self, **values: Any) -> None:
        """The build is over (caught up, or the run ended first):
        ``values`` (records, build_errors, rate, outcome) set on its span.
        Once; later calls do nothing."""
        with self._lock:
            s, self._build = self._build, None
        if s is not None:
            s.set_attributes(_attributes(values))
            s.end()

    def reverted(self, reason: str, **values: Any) -> None:
        """The run was reverted: a ``rehydrate.migration.revert`` span with
        status ERROR and the reason (and ``values``: revert_ms, ...)."""
        api = self._api
        if api is None:
            return
        s = _tracer(api).start_span("rehydrate.migration.revert", context=self._context(),
                                    attributes=_attributes({**self._ids, "reason": reason,
                                                            **values}))
        s.set_status(api[2](api[3].ERROR, f"reverted: {reason}"))
        s.end()


NO_MIGRATION_TRACE = MigrationTrace()


def start_migration(migration: str, table: str) -> MigrationTrace:
    """The spans of an online migration run starting now, on the caller's
    thread; ``NO_MIGRATION_TRACE`` without OpenTelemetry."""
    api = _otel()
    if api is None:
        return NO_MIGRATION_TRACE
    return MigrationTrace(api, migration, table)
