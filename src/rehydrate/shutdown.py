"""Close stores cleanly when the process is told to stop: SIGTERM (what
Kubernetes sends) and SIGINT by default (docs/durability.md, "Shutdown on
a signal").

``close_on_signals(*stores)`` installs the handlers and returns a
``ShutdownHandle``. On the first of its signals, within ``deadline_s``:

1. every store is synced: what was written so far is durable at once,
   whatever comes next;
2. ``on_close(signum)`` runs, the service's own cleanup (stop taking work,
   finish the batch in hand; its writes still land);
3. every store is closed: the rest written and fsynced, the clean end
   recorded, the directory's LOCK released;
4. the process exits: 0 on SIGTERM (a clean stop), 128 + signum on any
   other signal (130 on SIGINT, as a shell reports it), or ``exit_code``
   when given; 1 when a step failed or the deadline passed, with what was
   not done logged on the ``rehydrate.shutdown`` logger.

Why the steps run on threads: a Python signal handler runs on the main
thread between two bytecodes, possibly inside a ``with lock:`` of the very
store it would close. The handler only notes the signal and starts a raw
thread (``_thread.start_new_thread`` takes none of ``threading``'s locks,
which the interrupted code may hold); that thread starts the shutdown
thread, not a daemon, so an interpreter exit waits for it, and each step
runs on a daemon thread of its own so that a step stuck past the deadline
cannot hold the exit. The exit is ``os._exit`` after logging and the
standard streams are flushed: the main thread may be anywhere, and the
stores are closed already; ``atexit`` handlers do not run (put the
service's cleanup in ``on_close``).

With an asyncio loop (``loop=``, or the running loop when called from a
coroutine) the handlers are the loop's (``loop.add_signal_handler``): the
callback runs on the loop, and starts the same shutdown thread, so the
loop goes on serving while the stores close.
"""

from __future__ import annotations

import _thread
import functools
import logging
import math
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Union

from . import shutdown_risk
from .errors import (
    ConfigError, ForkedStoreError, MovedError, ReadOnlyError, StoreClosedError, StoreFailedError,
)
from .store import Store

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("rehydrate.shutdown")

DEFAULT_DEADLINE_S = 10.0
DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_NOT_CLEAN = 1  # a step failed, or the deadline passed

# What signal.signal gave back for a signal: a handler, SIG_DFL / SIG_IGN,
# or None (a handler installed from C).
_Previous = Union[Callable[[int, Optional[FrameType]], Any], int, signal.Handlers, None]

_active_lock = threading.Lock()
_active: Optional[ShutdownHandle] = None  # one handle at a time per process


def exit_code_for(signum: int, exit_code: Optional[int] = None) -> int:
    """The exit code of a clean shutdown on ``signum``: ``exit_code`` when
    given, else 0 on SIGTERM and 128 + signum on any other signal."""
    if exit_code is not None:
        return exit_code
    return 0 if signum == signal.SIGTERM else 128 + signum


class ShutdownHandle:
    """What ``close_on_signals`` installed. ``uninstall()`` puts back the
    handlers that were there before; ``signum`` is the signal that started
    a shutdown (None while none has)."""

    def __init__(self, stores: tuple[Store, ...], signals: tuple[signal.Signals, ...],
                 deadline_s: float, loop: Optional[asyncio.AbstractEventLoop],
                 exit_code: Optional[int],
                 on_close: Optional[Callable[[int], object]]) -> None:
        self.stores = stores
        self.signals = signals
        self.deadline_s = deadline_s
        self.loop = loop
        self.exit_code = exit_code
        self.on_close = on_close
        self.signum: Optional[int] = None
        self._t0 = 0.0
        self._previous: dict[signal.Signals, _Previous] = {}
        self._installed = False

    @property
    def installed(self) -> bool:
        """True until ``uninstall()``."""
        return self._installed

    def __repr__(self) -> str:
        names = ",".join(s.name for s in self.signals)
        state = ("closing" if self.signum is not None else
                 "installed" if self._installed else "uninstalled")
        return f"<rehydrate.ShutdownHandle {names} {len(self.stores)} store(s) {state}>"

    def __enter__(self) -> ShutdownHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    # ------------------------------------------------------------ install
    def _install(self) -> None:
        try:
            for sig in self.signals:
                if self.loop is None:
                    self._previous[sig] = signal.signal(sig, self._on_signal)
                else:
                    self._previous[sig] = signal.getsignal(sig)
                    self.loop.add_signal_handler(sig, self._signalled, int(sig))
        except (ValueError, RuntimeError, OSError) as e:
            self._restore()
            raise ConfigError(f"cannot handle {sig.name} here: {e}") from e
        self._installed = True
        shutdown_risk.note_installed()

    def uninstall(self) -> None:
        """Put back the handlers that were there before (with a loop: the
        loop's handler removed, the Python-level one before it put back).
        A shutdown already under way goes on. Calling it twice is fine."""
        global _active
        if not self._installed:
            return
        self._installed = False
        shutdown_risk.note_uninstalled()
        with _active_lock:
            if _active is self:
                _active = None
        self._restore()

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            if self.loop is not None:
                try:
                    self.loop.remove_signal_handler(sig)
                except (ValueError, RuntimeError, OSError):
                    pass  # (a closed loop: nothing of it to remove)
            if previous is not None:
                signal.signal(sig, previous)
        self._previous = {}

    # ------------------------------------------------------------ the signal
    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self._signalled(signum)

    def _signalled(self, signum: int) -> None:
        """On the main thread (or the loop's): note it, start the shutdown
        off this frame, return at once."""
        if self.signum is not None:
            # A second signal during the close: the close goes on to its
            # deadline (stopping now would lose what it has not written).
            _thread.start_new_thread(self._note_again, (signum,))
            return
        self.signum = signum
        self._t0 = time.monotonic()
        _thread.start_new_thread(self._start_shutdown, ())

    def _start_shutdown(self) -> None:
        threading.Thread(target=self._shut_down, name="rehydrate-shutdown",
                         daemon=False).start()

    def _note_again(self, signum: int) -> None:
        left = max(0.0, self._t0 + self.deadline_s - time.monotonic())
        log.warning("%s during the shutdown on %s: ignored; the close goes on, for at most "
                    "%.1f s more (SIGKILL stops at once and loses what is not yet durable)",
                    _name(signum), _name(self.signum or signum), left)

    def _shut_down(self) -> None:
        signum = self.signum
        assert signum is not None  # (set before this thread started)
        deadline = self._t0 + self.deadline_s
        log.info("%s: closing %d store(s) within %.1f s", _name(signum), len(self.stores),
                 self.deadline_s)
        problems: list[str] = []
        steps: list[tuple[str, list[tuple[str, Callable[[], object]]]]] = [
            ("sync", [(s.path, functools.partial(_sync, s)) for s in self.stores])]
        on_close = self.on_close
        if on_close is not None:
            what = getattr(on_close, "__qualname__", None) or repr(on_close)
            steps.append(("on_close", [(what, functools.partial(on_close, signum))]))
        steps.append(("close", [(s.path, s.close) for s in self.stores]))
        for i, (step, tasks) in enumerate(steps):
            late = _run_all(step, tasks, deadline, problems)
            if late:
                after = [name for name, _ in steps[i + 1:]]
                log.error("%s: the shutdown's deadline of %.1f s passed; not done: %s%s%s",
                          _name(signum), self.deadline_s,
                          "; ".join(f"{step} of {name}" for name in late),
                          f" (so not started: {', '.join(after)})" if after else "",
                          "".join(f"; {p}" for p in problems))
                _exit(EXIT_NOT_CLEAN)
        if problems:
            log.error("%s: the stores were closed, not cleanly: %s", _name(signum),
                      "; ".join(problems))
            _exit(EXIT_NOT_CLEAN)
        code = exit_code_for(signum, self.exit_code)
        log.info("%s: %d store(s) closed in %.3f s; exiting with %d", _name(signum),
                 len(self.stores), time.monotonic() - self._t0, code)
        _exit(code)


def close_on_signals(*stores: Store, deadline_s: float = DEFAULT_DEADLINE_S,
                     signals: Iterable[int] = DEFAULT_SIGNALS,
                     loop: Optional[asyncio.AbstractEventLoop] = None,
                     exit_code: Optional[int] = None,
                     on_close: Optional[Callable[[int], object]] = None) -> ShutdownHandle:
    """On the first of ``signals``, close every store within ``deadline_s``
    and exit (the module's docstring has the steps and the exit codes).

    ``loop``: an asyncio loop whose ``add_signal_handler`` to use; by
    default the running loop when called from one, else ``signal.signal``
    (main thread only). ``exit_code``: the code of a clean shutdown
    (default 0 on SIGTERM, 128 + signum otherwise). ``on_close(signum)``:
    the service's cleanup, run after the stores are synced and before they
    are closed. A store closed meanwhile by the service counts as closed.

    ConfigError for: no store, something that is not an open Store,
    ``deadline_s`` not a number > 0, an unknown or uncatchable signal, a
    bad ``exit_code`` or ``on_close``, no loop off the main thread, a loop
    that cannot take signal handlers, or a handle already installed
    (``uninstall()`` it first, or pass every store in one call).
    """
    global _active
    checked = _check_stores(stores)
    if isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float)) \
            or not math.isfinite(deadline_s) or deadline_s <= 0:
        raise ConfigError(f"deadline_s must be a number of seconds > 0, not {deadline_s!r}")
    sigs = _check_signals(signals)
    if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)
                                  or not 0 <= exit_code <= 255):
        raise ConfigError(f"exit_code must be None or an int from 0 to 255, not {exit_code!r}")
    if on_close is not None and not callable(on_close):
        raise ConfigError(f"on_close must be a callable taking the signal number, "
                          f"not {on_close!r}")
    if loop is None:
        loop = _running_loop()
    elif not callable(getattr(loop, "add_signal_handler", None)):
        raise ConfigError(f"loop must be an asyncio event loop, not {loop!r}")
    if loop is None and threading.current_thread() is not threading.main_thread():
        raise ConfigError("close_on_signals needs the main thread (Python runs signal "
                          "handlers there) or an asyncio loop= on the main thread")
    handle = ShutdownHandle(checked, sigs, float(deadline_s), loop, exit_code, on_close)
    with _active_lock:
        if _active is not None:
            raise ConfigError(f"close_on_signals is installed already ({_active!r}): pass "
                              "every store in one call, or uninstall() the other first")
        handle._install()
        _active = handle
    return handle


# ------------------------------------------------------------ checks
def _check_stores(stores: tuple[Store, ...]) -> tuple[Store, ...]:
    if not stores:
        raise ConfigError("close_on_signals needs at least one store")
    out: list[Store] = []
    for s in stores:
        if not isinstance(s, Store):
            raise ConfigError(f"close_on_signals takes Store objects, not {type(s).__name__}")
        if s.closed:
            raise ConfigError(f"store {s.path} is closed already: nothing to close on a signal")
        if all(s is not o for o in out):
            out.append(s)
    return tuple(out)


def _check_signals(signals: Iterable[int]) -> tuple[signal.Signals, ...]:
    if isinstance(signals, int):
        signals = (signals,)
    out: list[signal.Signals] = []
    for sig in signals:
        if isinstance(sig, bool) or not isinstance(sig, int):
            raise ConfigError(f"signals must be signal numbers, not {sig!r}")
        try:
            s = signal.Signals(sig)
        except ValueError:
            raise ConfigError(f"{sig} is not a signal number") from None
        if s in (signal.SIGKILL, signal.SIGSTOP):
            raise ConfigError(f"{s.name} cannot be caught")
        if s not in out:
            out.append(s)
    if not out:
        raise ConfigError("close_on_signals needs at least one signal")
    return tuple(out)


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    """The running asyncio loop, if any; asyncio is not imported for it
    (no loop runs where asyncio was never imported)."""
    aio = sys.modules.get("asyncio")
    if aio is None:
        return None
    try:
        loop: asyncio.AbstractEventLoop = aio.get_running_loop()
    except RuntimeError:
        return None
    return loop


# ------------------------------------------------------------ the steps
def _sync(store: Store) -> None:
    """Make what ``store`` took so far durable; a store that takes no
    writes (closed, a standby or reader, moved, inherited across fork) has
    nothing to sync. A failed store is a problem: its unsynced writes are
    lost already."""
    if store.closed:
        return
    try:
        store.sync()
    except StoreFailedError:
        raise
    except (StoreClosedError, ForkedStoreError, ReadOnlyError, MovedError):
        pass


def _run_all(step: str, tasks: list[tuple[str, Callable[[], object]]], deadline: float,
             problems: list[str]) -> list[str]:
    """Run ``tasks`` (what, fn) at once, each on a daemon thread; wait for
    them until ``deadline``. An exception is added to ``problems``; the
    names of those still running at the deadline are returned."""
    done: dict[str, Optional[BaseException]] = {}
    threads: list[tuple[str, threading.Thread]] = []

    def run(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported by the shutdown thread
            done[what] = e
        else:
            done[what] = None

    for what, fn in tasks:
        t = threading.Thread(target=run, args=(what, fn), name=f"rehydrate-shutdown-{step}",
                             daemon=True)
        t.start()
        threads.append((what, t))
    late = []
    for what, t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            late.append(what)
            continue
        error = done.get(what)
        if error is not None:
            log.error("%s of %s failed: %s: %s", step, what, type(error).__name__, error,
                      exc_info=error)
            problems.append(f"{step} of {what} failed: {type(error).__name__}: {error}")
    return late


# How long the exit waits for the logs and streams to flush: a pipe nobody
# reads must not keep a stopped process alive.
_FLUSH_WAIT_S = 2.0


def _exit(code: int) -> None:
    """End the process now, logs and standard streams flushed first."""
    flusher = threading.Thread(target=_flush_all, name="rehydrate-shutdown-flush", daemon=True)
    flusher.start()
    flusher.join(_FLUSH_WAIT_S)
    os._exit(code)


def _flush_all() -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass  # (a closed or broken stream: nothing more to say there)


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
