"""Feature gates: named conditions on a store's readiness that a service
reads on its request path (docs/warmup.md, "Feature gates").

``gate = store.gate(name, requires=[...])``: each requirement is a table
whose state is in (``table_ready``), a warmup phase over (``phase_done``),
a migration applied (``migration_at``), a standby's lag under a bound
(``lag_below``) or a callable ``fn(store) -> True``. ``bool(gate)`` reads one
precomputed attribute: no lock, no call into the store.

Who re-evaluates (``Gates.evaluate``): the store, when its state changes
(a phase ends, tables become ready, a standby's follower steps, a promote
or a handoff ends, the open fails, the store closes), and every
``gate.wait``, ``gate.why``, ``store.readiness()`` and metrics scrape (the
only moments a callable's answer, or a lag that grows with time alone, can
change the value between those events). Evaluations are serialized; each
transition is told to the listeners (``on_gate_open(name)``,
``on_gate_close(name, why)``), in order, from the thread that found it.

The store gives this module what it may read through a ``GateHost`` of
callables, nothing of its fields.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

from .errors import ConfigError, StoreFailedError
from .warmup import PHASES

if TYPE_CHECKING:
    import asyncio

__all__ = ["Requirement", "Gate", "Gates", "GateHost", "table_ready", "phase_done",
           "migration_at", "lag_below"]

log = logging.getLogger("rehydrate")

# How often a waiter on a gate with a callable requirement asks it again
# (nothing else tells when a callable's answer changes).
RECHECK_S = 0.05
_MAX_NAME = 200


class Requirement:
    """One condition of a gate; made by ``table_ready``, ``phase_done``,
    ``migration_at``, ``lag_below``, or from a callable given to
    ``store.gate``."""

    __slots__ = ("kind", "target", "bound", "fn")

    def __init__(self, kind: str, target: str = "", bound: float = 0.0,
                 fn: Optional[Callable[[Any], object]] = None) -> None:
        self.kind = kind        # "table", "phase", "migration", "lag", "callable"
        self.target = target    # the table, phase, migration id, or callable's name
        self.bound = bound      # a migration's fraction, a lag's seconds
        self.fn = fn

    def __repr__(self) -> str:
        return f"<requirement {describe(self)}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Requirement):
            return NotImplemented
        return (self.kind, self.target, self.bound, self.fn) == \
            (other.kind, other.target, other.bound, other.fn)

    def __hash__(self) -> int:
        return hash((self.kind, self.target, self.bound))


def _check_name(what: str, name: object) -> str:
    if type(name) is not str or not name or len(name) > _MAX_NAME:
        raise ConfigError(f"{what} must be a non-empty str of at most {_MAX_NAME} "
                          f"characters, not {name!r}")
    return name


def table_ready(table: str) -> Requirement:
    """Met once ``table``'s state is in (during a background open, once the
    replay has passed its records; on any other open store, at once).
    ConfigError for a name that is not a str."""
    return Requirement("table", _check_name("a table name", table))


def phase_done(phase: str) -> Requirement:
    """Met once the warmup phase ``phase`` (one of ``rehydrate.PHASES``) has
    ended, or the store is warm (a standby and a reader, which run no
    warmup, are warm once open). ConfigError for another name."""
    if phase not in PHASES:
        raise ConfigError(f"phase must be one of {PHASES}, not {phase!r}")
    return Requirement("phase", phase)


def migration_at(migration: str, fraction: float = 1.0) -> Requirement:
    """Met once migration ``migration`` has reached ``fraction`` (0 < f <= 1)
    of its run: once it is recorded as applied in the store's ledger (any
    fraction), or, for f < 1, while a live online run of it routes at least
    ``f`` of its table's reads to the shadow (it closes again if the run is
    reverted). ConfigError for a bad id or fraction."""
    _check_name("a migration id", migration)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be a number in (0, 1], not {fraction!r}")
    return Requirement("migration", migration, float(fraction))


def lag_below(seconds: float) -> Requirement:
    """Met while the store's lag (``store.lag["seconds"]``) is under
    ``seconds``: on a standby or a reader that follows its primary; always
    on a primary (it is the log: its lag is 0, so a gate made on a standby
    holds on after its promote); never on a store whose follower failed or
    stopped, or that handed its writes over. ConfigError for a bound that
    is not a positive number."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not 0 < seconds < math.inf:
        raise ConfigError(f"seconds must be a positive number, not {seconds!r}")
    return Requirement("lag", "", float(seconds))


def _callable_name(fn: object) -> str:
    # (__name__, not __qualname__: it is what why() and /readyz show, and
    # a nested function's qualified name is mostly its enclosing function.)
    return getattr(fn, "__name__", None) or repr(fn)


def describe(req: Requirement) -> str:
    if req.kind == "table":
        return f"table {req.target!r} ready"
    if req.kind == "phase":
        return f"phase {req.target!r} done"
    if req.kind == "migration":
        return f"migration {req.target!r} at {req.bound:g}"
    if req.kind == "lag":
        return f"lag below {req.bound:g} s"
    return f"{req.target}(store) is True"


@dataclass(frozen=True)
class GateHost:
    """What gates read of their store (all callables, called without the
    store's lock held).

    ``table_state(name)``: "ready", "pending" (known, state not in yet),
    "absent", or "unknown" (the open does not know the log's tables yet);
    ``phase_done(phase)``; ``migration_state(id)``: "applied", "pending"
    (registered, not applied), "absent" or "unknown" (the MANIFEST is not
    read yet); ``lag_s()``: seconds behind the primary, 0.0 on a primary,
    None when unknown (a follower that failed or stopped, a moved store);
    ``failure()``: why every gate is closed (the open failed, the store is
    closed), None otherwise; ``open_error()``: the open's error, for
    ``wait`` to raise; ``tell(event, *args)``: the listeners;
    ``migration_fraction(id)``: the fraction a live online run of ``id``
    routes to its shadow, None when none is live (docs/migrations.md,
    "Routing and automatic revert").
    """

    store: Any
    path: str
    table_state: Callable[[str], str]
    phase_done: Callable[[str], bool]
    migration_state: Callable[[str], str]
    lag_s: Callable[[], Optional[float]]
    failure: Callable[[], Optional[str]]
    open_error: Callable[[], Optional[BaseException]]
    tell: Callable[..., None]
    migration_fraction: Callable[[str], Optional[float]] = lambda _id: None


RequirementLike = Union[Requirement, Callable[[Any], object]]


class Gate:
    """A named feature gate of a store (``store.gate(name, requires=...)``).

    ``bool(gate)``: open now (one attribute read); ``wait(timeout)`` and
    ``await wait_async(timeout)``: block until it opens; ``why()``: the
    unmet requirements. A gate can close again (a lag bound crossed, a
    callable that says False, the store closed).
    """

    __slots__ = ("name", "requirements", "_open", "_unmet", "_error", "_polls", "_gates",
                 "__weakref__")

    def __init__(self, gates: "Gates", name: str, requirements: tuple[Requirement, ...]) -> None:
        self.name = name
        self.requirements = requirements
        self._open = False  # read by __bool__; written only by Gates.evaluate
        self._unmet: list[str] = [describe(r) for r in requirements]
        # A requirement found invalid after the gate was made (a table the
        # log turned out not to have): the gate stays closed, wait raises it.
        self._error: Optional[ConfigError] = None
        self._polls = any(r.kind == "callable" for r in requirements)
        self._gates = gates

    def __bool__(self) -> bool:
        return self._open

    def why(self) -> list[str]:
        """The unmet requirements, each in words (empty when open),
        re-evaluated now."""
        self._gates.evaluate()
        return list(self._unmet)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the gate is open: True, or False at the timeout or
        once the store is closed. Raises StoreFailedError when the store's
        background open failed, ConfigError when a requirement turned out
        to name a table or migration the store does not have."""
        return self._gates.wait(self, timeout)

    async def wait_async(self, timeout: Optional[float] = None) -> bool:
        """``wait`` for asyncio: the event loop is never blocked (the task
        waits on a future the gate's opening completes)."""
        return await self._gates.wait_async(self, timeout)

    def __repr__(self) -> str:
        return f"<rehydrate.Gate {self.name!r} {'open' if self._open else 'closed'}>"


class Gates:
    """A store's gates, and their evaluation."""

    def __init__(self, host: GateHost) -> None:
        self.host = host
        self.by_name: dict[str, Gate] = {}
        self._eval_lock = threading.Lock()
        self._evaluating: Optional[int] = None  # the thread evaluating now
        self._cv = threading.Condition()  # waiters; guards _open/_unmet writes
        # (gate, loop, future) of each task in wait_async.
        self._async_waiters: list[tuple[Gate, Any, Any]] = []
        # (gate name, requirement index) of callables that raised and were
        # reported: reported again only after they stop raising.
        self._raising: set[tuple[str, int]] = set()

    def __bool__(self) -> bool:
        return bool(self.by_name)

    # ------------------------------------------------------------- making
    def add(self, name: str, requires: Iterable[RequirementLike]) -> Gate:
        """A new gate; ConfigError for a bad or repeated name, a bad
        requirement, a table or migration the store does not have."""
        _check_name("a gate name", name)
        if isinstance(requires, (str, bytes)) or not isinstance(requires, Iterable):
            raise ConfigError(f"requires must be a list of requirements, not {requires!r}")
        reqs: list[Requirement] = []
        for r in requires:
            if isinstance(r, Requirement):
                reqs.append(r)
            elif callable(r):
                if inspect.iscoroutinefunction(r):
                    raise ConfigError(f"requirement {_callable_name(r)} is a coroutine "
                                      "function; a gate's callable must answer at once")
                reqs.append(Requirement("callable", _callable_name(r), fn=r))
            else:
                raise ConfigError(f"a requirement is rh.table_ready(...), rh.phase_done(...), "
                                  f"rh.migration_at(...), rh.lag_below(...) or a callable "
                                  f"fn(store), not {r!r}")
        if not reqs:
            raise ConfigError(f"gate {name!r} needs at least one requirement")
        for r in reqs:
            error = self._invalid(r)
            if error is not None:
                raise error
        gate = Gate(self, name, tuple(reqs))
        with self._eval_lock:
            if name in self.by_name:
                raise ConfigError(f"this store has a gate named {name!r} already")
            self.by_name = {**self.by_name, name: gate}  # (readers iterate a copy)
        self.evaluate()
        return gate

    def migration_routed(self, migration: str) -> None:
        """Re-evaluate the gates after an online run of ``migration``
        changed its fraction (route, a revert): what the engine calls,
        without the store's lock held, so a ``migration_at(id, f)`` gate
        opens (or closes) at once."""
        self.evaluate()

    def _invalid(self, r: Requirement) -> Optional[ConfigError]:
        """The ConfigError for a requirement naming what the store does not
        have; None when it has it or cannot tell yet."""
        host = self.host
        if r.kind == "table" and host.table_state(r.target) == "absent":
            return ConfigError(f"gate requirement on table {r.target!r}: the store has no "
                               "such table", path=host.path, reason="unknown_table")
        if r.kind == "migration" and host.migration_state(r.target) == "absent":
            return ConfigError(f"gate requirement on migration {r.target!r}: it is neither "
                               "registered (Store.open(migrations=...)) nor in the store's "
                               "ledger", path=host.path, reason="unknown_migration")
        return None

    # ----------------------------------------------------------- evaluating
    def evaluate(self, blocking: bool = True) -> None:
        """Re-evaluate every gate; tell the listeners of each change. A
        nested call (from a listener or a callable requirement on this
        thread) and, with ``blocking=False``, a call while another thread
        evaluates, return at once (the evaluation under way tells)."""
        if not self.by_name:
            return
        me = threading.get_ident()
        if self._evaluating == me:
            return
        if not self._eval_lock.acquire(blocking):
            return
        try:
            self._evaluating = me
            self._evaluate_locked()
        finally:
            self._evaluating = None
            self._eval_lock.release()

    def _evaluate_locked(self) -> None:
        failure = self.host.failure()
        changes: list[tuple[Gate, bool, bool, list[str]]] = []
        for gate in self.by_name.values():
            unmet = [failure] if failure is not None else self._unmet_of(gate)
            is_open = not unmet
            if is_open != gate._open or unmet != gate._unmet:
                changes.append((gate, gate._open, is_open, unmet))
        if changes:
            with self._cv:
                for gate, _was, is_open, unmet in changes:
                    gate._unmet = unmet
                    gate._open = is_open
                self._cv.notify_all()
        # Told in order, under the evaluation lock: a listener sees each
        # gate open, close, open... as it happened. (A closed gate whose
        # reasons change is no event.)
        for gate, was_open, is_open, unmet in changes:
            if is_open and not was_open:
                self.host.tell("on_gate_open", gate.name)
            elif was_open and not is_open:
                self.host.tell("on_gate_close", gate.name, list(unmet))
        self._wake_async(failure is not None)

    def _unmet_of(self, gate: Gate) -> list[str]:
        if gate._error is not None:
            return [f"{gate._error.detail}"]
        host = self.host
        unmet: list[str] = []
        for i, r in enumerate(gate.requirements):
            kind = r.kind
            if kind == "table":
                state = host.table_state(r.target)
                if state == "ready":
                    continue
                if state == "absent":
                    self._broken(gate, r)
                    return [f"table {r.target!r} does not exist"]
                unmet.append(f"table {r.target!r} not ready"
                             + (" (the open does not know the log's tables yet)"
                                if state == "unknown" else ""))
            elif kind == "phase":
                if not host.phase_done(r.target):
                    unmet.append(f"phase {r.target!r} not done")
            elif kind == "migration":
                state = host.migration_state(r.target)
                if state == "applied":
                    continue
                if state == "absent":
                    self._broken(gate, r)
                    return [f"migration {r.target!r} does not exist"]
                # An online run routing at least the bound (below 1: all of
                # it is met only once completed, in the ledger).
                routed = host.migration_fraction(r.target) if r.bound < 1.0 else None
                if routed is not None and routed >= r.bound:
                    continue
                unmet.append(f"migration {r.target!r} not at {r.bound:g} "
                             + (f"(routed {routed:g})" if routed is not None else "(not applied)"))
            elif kind == "lag":
                lag = host.lag_s()
                if lag is None:
                    unmet.append(f"lag below {r.bound:g} s (the lag is unknown: not "
                                 "following)")
                elif not lag < r.bound:
                    unmet.append(f"lag below {r.bound:g} s (it is {lag:.3f} s)")
            else:
                unmet.extend(self._call(gate, i, r))
        return unmet

    def _call(self, gate: Gate, i: int, r: Requirement) -> list[str]:
        assert r.fn is not None
        try:
            ok = r.fn(self.host.store)
        except Exception as e:  # noqa: BLE001 - the gate stays closed; reported once
            key = (gate.name, i)
            if key not in self._raising:
                self._raising.add(key)
                log.error("gate %r: requirement %s raised %s: %s (the gate stays closed; "
                          "reported again only after it stops raising)", gate.name, r.target,
                          type(e).__name__, e, exc_info=True)
            return [f"{r.target}(store) raised {type(e).__name__}: {e}"]
        self._raising.discard((gate.name, i))
        if ok is True:
            return []
        return [f"{r.target}(store) returned {ok!r}"]

    def _broken(self, gate: Gate, r: Requirement) -> None:
        """A requirement checked once the store knew: it names nothing."""
        error = self._invalid(r)
        if error is not None and gate._error is None:
            gate._error = error
            log.error("gate %r can never open: %s", gate.name, error.detail)

    # -------------------------------------------------------------- waiting
    def wait(self, gate: Gate, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.evaluate()
            with self._cv:
                if gate._open:
                    return True
                if self._finished(gate):
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if gate._polls:
                    left = RECHECK_S if left is None else min(left, RECHECK_S)
                self._cv.wait(left)

    def _finished(self, gate: Gate) -> bool:
        """True when ``gate`` can no longer open (the store closed); raises
        what a waiter is told instead (the open's failure, a bad
        requirement)."""
        if gate._error is not None:
            raise gate._error
        error = self.host.open_error()
        if error is not None:
            raise StoreFailedError(f"the background open failed: {type(error).__name__}: "
                                   f"{error}", path=self.host.path) from error
        return self.host.failure() is not None

    async def wait_async(self, gate: Gate, timeout: Optional[float]) -> bool:
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            # Never waits for another thread's evaluation: that one wakes us.
            self.evaluate(blocking=False)
            future: asyncio.Future[None] = loop.create_future()
            entry = (gate, loop, future)
            with self._cv:
                if gate._open:
                    return True
                if self._finished(gate):
                    return False
                self._async_waiters.append(entry)
            try:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    return False
                if gate._polls:
                    left = RECHECK_S if left is None else min(left, RECHECK_S)
                try:
                    await asyncio.wait_for(future, left)
                except asyncio.TimeoutError:
                    pass
            finally:
                with self._cv:
                    if entry in self._async_waiters:
                        self._async_waiters.remove(entry)

    def _wake_async(self, final: bool) -> None:
        """Complete the futures of tasks waiting on a gate that opened (or
        on any gate once the store is closed or failed), on their loops."""
        with self._cv:
            due = [w for w in self._async_waiters if final or w[0]._open or w[0]._error]
            for w in due:
                self._async_waiters.remove(w)
        for _gate, loop, future in due:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:
                pass  # (its loop is closed: nobody waits any more)

    def inherited(self) -> None:
        """In a child that inherited the store across fork(): the locks may
        be held by threads that did not survive it, and no task waits."""
        self._eval_lock = threading.Lock()
        self._evaluating = None
        self._cv = threading.Condition()
        self._async_waiters = []

    # ------------------------------------------------------------- reading
    def report(self) -> dict[str, dict[str, Any]]:
        """{name: {"open", "unmet"}}, re-evaluated now unless another thread
        is evaluating (then as that evaluation leaves them): readiness and
        metrics, which may be asked from an event loop, never wait."""
        self.evaluate(blocking=False)
        return {name: {"open": g._open, "unmet": list(g._unmet)}
                for name, g in self.by_name.items()}


def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)

