"""Staged warmup: the phases of an open, their budgets, a stall watchdog,
success criteria, hooks and listeners (docs/warmup.md).

An open runs ``plan``, ``snapshot``, ``replay``, ``migrate`` (nothing yet),
``populate`` and ``prime`` in that order, then the store is ready. Each phase
is timed and reported (``store.warmup_report``) and told to listeners. A
phase may have a budget (seconds) and the whole warmup a stall limit
(``stall_s``): no progress for that long is a StallError, a phase over its
budget a PhaseTimeout, both WarmupError with the phase, the time it had
run and, for a hook, its Python stack where it was stuck. Policy "warn"
logs those instead and goes on.

Hooks (``populate``, ``prime``) are ``fn(store, progress)``; ``progress(n=1)``
tells the watchdog the hook is alive. A hook runs on its own thread so that
the open can give up on it on time even when the hook never returns (Python
cannot stop a thread: a hook given up on runs on in the background, its
result ignored). Criteria are ``fn(store) -> True``; anything else, or an
exception, is a CriteriaError naming the criterion.

A hook that raises ``RetryableError`` (or a type of ``retry_on``) is tried
again after a backoff with full jitter (backoff.py), up to
``retry_attempts`` tries and within its phase's budget; the tries are
counted in the phase's report (``attempts``, ``retries``). The hooks that
the crash-loop guard skips (crashloop.py) are not run (``skipped``).
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, TypeAlias

from . import backoff as _backoff
from . import tracing as _tracing
from ._sysinfo import proc_kb_field
from .crashloop import Step, hook_step
from .errors import (
    ConfigError, CriteriaError, PhaseTimeout, RetryableError, StallError, WarmupError,
)

# The store is typed Any here: warmup.py is imported by store.py.
#: A populate or prime hook: ``fn(store, progress)``; ``progress(n=1)`` counts
#: n units done (it keeps the stall watch quiet).
Hook: TypeAlias = Callable[[Any, Callable[[int], None]], object]
#: A phase's success criterion: ``fn(store)``, which returns True on success.
Criterion: TypeAlias = Callable[[Any], object]

PHASES = ("plan", "snapshot", "replay", "migrate", "populate", "prime")
_HOOK_PHASES = ("populate", "prime")
_POLICIES = ("fail", "warn")
_LISTENER_EVENTS = ("on_phase_start", "on_progress", "on_phase_end", "on_corruption",
                    "on_gate_open", "on_gate_close", "on_migration_state",
                    "on_migration_progress")
_PROGRESS_EVERY_S = 0.1
# Where each phase starts on readiness's 0..1 progress scale (the replay,
# measured by bytes, spans most of it).
_PHASE_START = {"plan": 0.0, "snapshot": 0.05, "replay": 0.1, "migrate": 0.9,
                "populate": 0.93, "prime": 0.96}  # on_progress is rate-limited to this

log = logging.getLogger("rehydrate")


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


class LoggingListener:
    """The default listener: one INFO line per finished phase on the
    ``rehydrate`` logger."""

    def on_phase_end(self, phase: str, stats: Mapping[str, Any]) -> None:
        extra = "".join(f", {k} {stats[k]:,}" for k in ("records", "bytes") if stats.get(k))
        log.info("warmup phase %s: %.3f s%s", phase, stats["duration_s"], extra)

    def on_gate_open(self, name: str) -> None:
        log.info("gate %s: open", name)

    def on_gate_close(self, name: str, why: list[str]) -> None:
        log.info("gate %s: closed (%s)", name, "; ".join(why))


class Warmup:
    """How an open warms up: ``Store.open(path, warmup=Warmup(...))``.

    ``budgets``: {phase: seconds > 0}; ``stall_s``: seconds > 0 without
    progress that count as a stall (None: no stall watch); ``populate`` and
    ``prime``: lists of hooks ``fn(store, progress)``; ``criteria``: {phase:
    [fn(store) -> True]}; ``listeners``: objects with any of
    on_phase_start(phase, info), on_progress(phase, done, total),
    on_phase_end(phase, stats), on_corruption(problem), on_gate_open(name),
    on_gate_close(name, why), on_migration_state(store, status),
    on_migration_progress(store, status) (online migrations:
    docs/migrations.md) (default: one that logs phase ends and gates'
    changes); ``policy``: {phase: "fail" | "warn"} (default fail).
    Retries (docs/warmup.md, "Retries"): a hook that raises
    ``RetryableError``, or an instance of one of the exception types in
    ``retry_on``, is tried again, at most ``retry_attempts`` tries in all
    (>= 1; 1: no retry), after waits drawn from an exponential backoff with
    full jitter: ``retry_random()`` (a fraction in [0, 1), ``random.random``
    by default) of ``min(retry_max_s, retry_base_s * 2**(try-1))``, and
    never past the phase's budget. ConfigError for anything else.
    """

    def __init__(self, *, budgets: Optional[Mapping[str, float]] = None,
                 stall_s: Optional[float] = None, populate: Sequence[Hook] = (),
                 prime: Sequence[Hook] = (),
                 criteria: Optional[Mapping[str, Sequence[Criterion]]] = None,
                 listeners: Optional[Sequence[object]] = None,
                 policy: Optional[Mapping[str, str]] = None,
                 retry_on: Sequence[type[BaseException]] = (),
                 retry_attempts: int = 5, retry_base_s: float = 0.1,
                 retry_max_s: float = 5.0,
                 retry_random: Callable[[], float] = random.random) -> None:
        # Keyed by phase; looked up with the current phase, None before the first.
        self.budgets: dict[Optional[str], float] = self._per_phase(budgets, "budgets", self._check_seconds)
        if stall_s is not None:
            self._check_seconds("stall_s", stall_s)
        self.stall_s = stall_s
        self.hooks = {"populate": self._callables(populate, "populate"),
                      "prime": self._callables(prime, "prime")}
        self.criteria: dict[Optional[str], list[Criterion]] = {phase: self._callables(fns, f"criteria[{phase!r}]")
                         for phase, fns in self._per_phase(criteria, "criteria").items()}
        if listeners is None:
            listeners = [LoggingListener()]
        listeners = list(listeners) if isinstance(listeners, (list, tuple)) else None
        if listeners is None or not all(any(hasattr(x, e) for e in _LISTENER_EVENTS)
                                        for x in listeners):
            raise ConfigError("listeners must be a list of objects with on_phase_start, "
                              "on_progress, on_phase_end, on_corruption, on_gate_open "
                              "or on_gate_close")
        self.listeners = listeners
        self.policy: dict[Optional[str], str] = self._per_phase(policy, "policy", self._check_policy)
        if not isinstance(retry_on, (list, tuple)) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
            raise ConfigError("retry_on must be a list or tuple of exception types")
        self.retry_on: tuple[type[BaseException], ...] = (RetryableError, *retry_on)
        if type(retry_attempts) is not int or retry_attempts < 1:
            raise ConfigError(f"retry_attempts must be an int >= 1, not {retry_attempts!r}")
        self.retry_attempts = retry_attempts
        self._check_seconds("retry_base_s", retry_base_s)
        self._check_seconds("retry_max_s", retry_max_s)
        self.retry_base_s, self.retry_max_s = float(retry_base_s), float(retry_max_s)
        if not callable(retry_random):
            raise ConfigError("retry_random must be a callable returning a fraction in [0, 1)")
        self.retry_random = retry_random

    @staticmethod
    def _check_seconds(what: str, v: object) -> None:
        if type(v) not in (int, float) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
            raise ConfigError(f"{what} must be a positive number of seconds, not {v!r}")

    @staticmethod
    def _check_policy(what: str, v: object) -> None:
        if v not in _POLICIES:
            raise ConfigError(f"{what} must be 'fail' or 'warn', not {v!r}")

    @staticmethod
    def _per_phase(d: object, what: str,
                   check: Optional[Callable[[str, object], None]] = None) -> dict[Any, Any]:
        if d is None:
            return {}
        if not isinstance(d, dict) or not all(k in PHASES for k in d):
            raise ConfigError(f"{what} must be a dict keyed by phases {PHASES}")
        if check is not None:
            for k, v in d.items():
                check(f"{what}[{k!r}]", v)
        return dict(d)

    @staticmethod
    def _callables(fns: object, what: str) -> list[Any]:
        if not isinstance(fns, (list, tuple)) or not all(callable(f) for f in fns):
            raise ConfigError(f"{what} must be a list of callables")
        return list(fns)


class WarmupRun:
    """One open's warmup: phase timings, listeners, the watchdog."""

    def __init__(self, warmup: Optional[Warmup], path: str,
                 cancel: Optional[bytearray] = None) -> None:
        self.w = warmup if warmup is not None else Warmup()
        self.path = path
        # Set by the store's close(): a hook's wait gives up (the hook's
        # thread runs on), as the replay does.
        self.cancel = cancel if cancel is not None else bytearray(1)
        self.t0 = time.perf_counter()
        self.phases: list[dict[str, Any]] = []
        self.current: Optional[str] = None
        self._phase_t0 = 0.0
        self._last_tick = 0.0
        self._done = 0
        self._total = 0
        self._last_progress_event = 0.0
        # Called after each phase's end is told (the store re-evaluates its
        # feature gates there: gates.py).
        self.after_phase: Optional[Callable[[], None]] = None
        # The crash-loop guard (crashloop.py): the steps to skip, those
        # skipped, and the step running now (what a failure is blamed on).
        self.skip: tuple[Step, ...] = ()
        self.skipped: list[Step] = []
        self.step: Optional[Step] = None
        self.retries: dict[str, int] = {}
        self._backoff_wake = threading.Event()  # (waited on with a timeout)
        # The open's spans (tracing.py; a no-op without OpenTelemetry), set
        # by the store when the open starts, and the plan's seconds per phase.
        self.trace: _tracing.OpenTrace = _tracing.NO_TRACE
        self.predicted: dict[str, float] = {}

    def expect(self, plan: Mapping[str, Any]) -> None:
        """The plan's prediction of each phase's seconds, for the trace."""
        self.predicted = dict(plan.get("predicted_phases_s") or {})
        self.predicted["open"] = plan["predicted_s"]

    # -- listeners ---------------------------------------------------------
    def _tell(self, event: str, *args: Any) -> None:
        for listener in self.w.listeners:
            fn = getattr(listener, event, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a listener never breaks a warmup
                log.exception("warmup listener %r failed in %s", listener, event)

    def corruption(self, problem: object) -> None:
        self.trace.problem(problem)
        self._tell("on_corruption", problem)

    def notify(self, event: str, *args: Any) -> None:
        """Tell the listeners that have ``event`` (a gate opened or closed:
        gates.py), as the warmup's own events are told."""
        self._tell(event, *args)

    # -- phases --------------------------------------------------------------
    def start(self, phase: str, **info: Any) -> None:
        self.current = phase
        self._phase_t0 = self._last_tick = time.perf_counter()
        self._done = self._total = 0
        self.trace.phase_started(phase)
        self._tell("on_phase_start", phase, dict(info))

    def tick(self, done: Optional[int] = None, total: Optional[int] = None, n: int = 1) -> None:
        """Progress in the current phase (thread-safe enough: plain stores)."""
        now = time.perf_counter()
        self._last_tick = now
        self._done = self._done + n if done is None else done
        if total is not None:
            self._total = total
        if now - self._last_progress_event >= _PROGRESS_EVERY_S:
            self._last_progress_event = now
            self._tell("on_progress", self.current, self._done, self._total)

    def end(self, store: Any = None, **stats: Any) -> dict[str, Any]:
        """Close the current phase: its criteria, its budget, the listeners."""
        phase = self.current
        elapsed = time.perf_counter() - self._phase_t0
        self.trace.phase_stats({"name": phase, "duration_s": elapsed, **stats},
                               self.predicted.get(phase or ""))
        for fn in self.w.criteria.get(phase, ()):
            try:
                ok = fn(store)
            except Exception as e:
                raise CriteriaError(f"criterion {_name(fn)} of phase {phase} raised "
                                    f"{type(e).__name__}: {e}", phase=phase, elapsed_s=elapsed,
                                    path=self.path) from e
            if ok is not True:
                raise CriteriaError(f"criterion {_name(fn)} of phase {phase} returned {ok!r}",
                                    phase=phase, elapsed_s=elapsed, path=self.path)
        entry: dict[str, Any] = {"name": phase, "duration_s": elapsed, **stats}
        rss = _rss_bytes()
        if rss is not None:
            entry["rss_bytes"] = rss
        self.phases.append(entry)
        budget = self.w.budgets.get(phase)
        if budget is not None and elapsed > budget:
            self._overrun(PhaseTimeout(f"phase {phase} took {elapsed:.3f} s, over its budget "
                                       f"of {budget} s", phase=phase, elapsed_s=elapsed,
                                       path=self.path))
        self.trace.phase_ended()
        self._tell("on_phase_end", phase, dict(entry))
        if self.after_phase is not None:
            self.after_phase()
        return entry

    def _overrun(self, err: WarmupError) -> None:
        if self.w.policy.get(err.phase, "fail") == "warn":
            log.warning("%s (policy warn: going on)", err.detail)
            return
        raise err

    # -- the watchdog for work on this thread (replay) -----------------------
    def watch(self, cancel: bytearray) -> "_Watch":
        """A thread that sets ``cancel[0]`` when the current phase stalls or
        passes its budget (under policy "fail"); ``verdict()`` then says which."""
        return _Watch(self, cancel)

    def _limits(self) -> tuple[Optional[float], Optional[float]]:
        return self.w.budgets.get(self.current), self.w.stall_s

    def _limit_error(self, what: str, stall: Optional[float], budget: Optional[float],
                     thread: Optional[threading.Thread] = None) -> Optional[WarmupError]:
        """StallError or PhaseTimeout when ``what`` (the current phase, or a
        hook in it, run by ``thread``) is past a limit now, else None."""
        now = time.perf_counter()
        elapsed = now - self._phase_t0
        where: dict[str, Any] = {"phase": self.current, "elapsed_s": elapsed, "path": self.path,
                 "stack": _stack_of(thread) if thread is not None else None}
        if stall is not None and now - self._last_tick > stall:
            return StallError(f"{what} made no progress for {now - self._last_tick:.1f} s "
                              f"(stall_s {stall})", **where)
        if budget is not None and elapsed > budget:
            return PhaseTimeout(f"{what} is past the budget of {budget} s", **where)
        return None

    # -- hooks ---------------------------------------------------------------
    def run_hooks(self, phase: str, store: Any) -> dict[str, Any]:
        self.start(phase, hooks=[_name(f) for f in self.w.hooks[phase]])
        attempts, skipped = 0, []
        for fn in self.w.hooks[phase]:
            step = hook_step(phase, fn)
            if step in self.skip:
                skipped.append(step.name)
                self.skipped.append(step)
                continue
            self.step = step
            attempts += self._run_with_retries(phase, fn, store)
            self.step = None
        self.retries[phase] = attempts - (len(self.w.hooks[phase]) - len(skipped))
        return self.end(store, hooks=len(self.w.hooks[phase]), attempts=attempts,
                        retries=self.retries[phase], skipped=skipped)

    def _run_with_retries(self, phase: str, fn: Hook, store: Any) -> int:
        """Run ``fn`` until it returns, trying again after a retryable
        error (backoff with full jitter, within the budget); the tries made."""
        w, attempt = self.w, 1
        while True:
            try:
                self._run_hook(phase, fn, store)
                return attempt
            except _Retryable as r:
                e = r.error
                if attempt >= w.retry_attempts:
                    raise WarmupError(
                        f"hook {_name(fn)} of phase {phase} raised {type(e).__name__}: {e} "
                        f"(retryable; {attempt} attempts made, retry_attempts "
                        f"{w.retry_attempts})", phase=phase,
                        elapsed_s=time.perf_counter() - self._phase_t0, path=self.path,
                        reason="hook_error") from e
                wait = _backoff.delay(w.retry_base_s, w.retry_max_s, attempt, w.retry_random)
                log.info("hook %s of phase %s: %s: %s; try %d in %.3f s", _name(fn), phase,
                         type(e).__name__, e, attempt + 1, wait)
                self._back_off(phase, fn, wait, attempt, e)
                attempt += 1

    def _back_off(self, phase: str, fn: Hook, wait: float, attempt: int,
                  error: BaseException) -> None:
        """Wait ``wait`` seconds before the next try: a real wait on an
        event, in slices, given up when the store closes or the phase's
        budget passes (policy "fail"); a backoff is no stall."""
        budget = None if self.w.policy.get(phase, "fail") == "warn" else self.w.budgets.get(phase)
        deadline = time.perf_counter() + wait
        while True:
            if self.cancel[0]:
                raise WarmupError(f"hook {_name(fn)} of phase {phase} given up on: the store "
                                  "is closing", phase=phase, path=self.path, reason="cancelled",
                                  elapsed_s=time.perf_counter() - self._phase_t0)
            err = self._limit_error(f"hook {_name(fn)} of phase {phase} (retrying after "
                                    f"{attempt} attempts: {type(error).__name__}: {error})",
                                    None, budget)
            if err is not None:
                raise err from error
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            self._backoff_wake.wait(min(left, 0.05))
        self._last_tick = time.perf_counter()

    def _run_hook(self, phase: str, fn: Hook, store: Any) -> None:
        outcome: dict[str, BaseException] = {}

        def progress(n: int = 1) -> None:
            self.tick(n=n)

        def body() -> None:
            try:
                fn(store, progress)
            except BaseException as e:  # noqa: BLE001 - handed to the opening thread
                outcome["error"] = e

        # (What the hook traces nests under its phase's span.)
        t = threading.Thread(target=self.trace.carried(body), name=f"rehydrate-hook:{_name(fn)}",
                             daemon=True)
        self._last_tick = time.perf_counter()
        t.start()
        budget, stall = self._limits()
        while True:
            t.join(0.05)
            if not t.is_alive():
                break
            if self.cancel[0]:
                raise WarmupError(f"hook {_name(fn)} of phase {phase} given up on: the store "
                                  "is closing", phase=phase, path=self.path, reason="cancelled",
                                  elapsed_s=time.perf_counter() - self._phase_t0,
                                  stack=_stack_of(t))
            err = self._limit_error(f"hook {_name(fn)} of phase {phase}", stall, budget, t)
            if err is not None:
                if self.w.policy.get(phase, "fail") == "warn":
                    log.warning("%s (policy warn: waiting on)", err.detail)
                    budget = stall = None  # said once; wait for the hook
                    continue
                raise err  # the hook's thread runs on; its result is ignored
        if "error" in outcome:
            e = outcome["error"]
            if isinstance(e, self.w.retry_on):
                raise _Retryable(e)
            raise WarmupError(f"hook {_name(fn)} of phase {phase} raised "
                              f"{type(e).__name__}: {e}", phase=phase,
                              elapsed_s=time.perf_counter() - self._phase_t0,
                              path=self.path, reason="hook_error") from e

    def progress(self, plan: Optional[dict[str, Any]],
                 done: bool) -> tuple[float, Optional[float]]:
        """(fraction 0..1, seconds left or None) of the whole open, for
        readiness: the replay's share by bytes, the rest by phase; the time
        left from the plan's prediction, or the replay's rate once known."""
        if done:
            return 1.0, 0.0
        if self.current == "replay" and self._total:
            frac = min(1.0, self._done / self._total)
            spent = time.perf_counter() - self._phase_t0
            return round(0.1 + 0.8 * frac, 4), (spent * (1 - frac) / frac if frac else None)
        predicted = (plan or {}).get("predicted_s")
        elapsed = time.perf_counter() - self.t0
        left = max(0.0, predicted - elapsed) if predicted is not None else None
        return _PHASE_START.get(self.current or "", 0.0), left

    def report(self) -> dict[str, Any]:
        return {"phases": list(self.phases), "total_s": time.perf_counter() - self.t0,
                "predicted_s": None}


class _Retryable(Exception):
    """A hook's retryable error, on its way to ``_run_with_retries``."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _rss_bytes() -> Optional[int]:
    """This process's resident memory now (VmRSS), or None where unknown."""
    return proc_kb_field("/proc/self/status", "VmRSS")


def _stack_of(thread: threading.Thread) -> Optional[str]:
    if thread.ident is None:
        return None
    frame = sys._current_frames().get(thread.ident)
    return "".join(traceback.format_stack(frame)) if frame is not None else None


class _Watch:
    """Sets a cancel flag when the watched phase stalls or runs over."""

    def __init__(self, run: WarmupRun, cancel: bytearray):
        self.run, self.cancel = run, cancel
        self.error: Optional[WarmupError] = None
        self._stop = threading.Event()
        budget, stall = run._limits()
        if run.w.policy.get(run.current, "fail") == "warn":
            budget = stall = None  # reported at the phase's end, never cancelled
        self._budget, self._stall = budget, stall
        self._thread = None
        if budget is not None or stall is not None:
            self._thread = threading.Thread(target=self._loop, name="rehydrate-watchdog",
                                            daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        run = self.run
        # Checks 20 times per limit (at least every 1 s, at most every 50 ms):
        # prompt enough, and a long replay is not woken for nothing.
        limits = [x for x in (self._stall, self._budget) if x is not None]
        every = min(1.0, max(0.05, min(limits) / 20))
        while not self._stop.wait(every):
            self.error = run._limit_error(f"phase {run.current}", self._stall, self._budget)
            if self.error is not None:
                self.cancel[0] = 1
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
