"""Whether a SIGTERM would lose a store's unsynced writes, and the one-time
warning that says so (docs/durability.md, "Shutdown on a signal").

Under ``sync="interval"`` or ``"none"`` a write returns before its frame
reaches the log; ``close()`` writes it, and an ``atexit`` hook closes a
store left open, but a signal whose disposition is the default ends the
process without either. A store checks once, when its first frame is
written (never on the write path), and the first store of a process that
finds SIGTERM at its default disposition with no ``close_on_signals``
(shutdown.py) installed logs one warning on the ``rehydrate.shutdown``
logger. The command line turns it off (``silence``): a tool's store is
closed by the tool.

Light on purpose: the store imports it, so ``import rehydrate`` does; the
helper itself (shutdown.py) is loaded only when used.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("rehydrate.shutdown")

_lock = threading.Lock()
_installed = 0  # close_on_signals handles installed now
_warned = False
_silenced = False


def note_installed() -> None:
    """A ``close_on_signals`` handle was installed (shutdown.py)."""
    global _installed
    with _lock:
        _installed += 1


def note_uninstalled() -> None:
    """A ``close_on_signals`` handle was uninstalled."""
    global _installed
    with _lock:
        _installed = max(0, _installed - 1)


def silence() -> None:
    """No warning in this process from now on (the command line's tools)."""
    global _silenced
    with _lock:
        _silenced = True


def sigterm_loses_writes() -> bool:
    """True when a SIGTERM now would end this process without closing its
    stores: SIGTERM at its default disposition and no ``close_on_signals``.
    (A handler installed from C reads as None: not known, so not said.)"""
    return _installed == 0 and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def check(path: str, sync: str) -> bool:
    """The once-per-process check a buffered store makes when it has taken
    writes (``sync`` is its mode); True when it logged the warning."""
    global _warned
    with _lock:
        if _warned or _silenced or not sigterm_loses_writes():
            return False
        _warned = True
    log.warning(
        "store %s (sync=%r) holds writes that are not yet durable, and a SIGTERM would end "
        "this process without closing it: those writes would be lost (a Kubernetes pod stop "
        "sends SIGTERM). Call rehydrate.close_on_signals(store) once the store is open, or "
        "close the store from your own SIGTERM handler (docs/durability.md, \"Shutdown on a "
        "signal\"). Said once per process.", path, sync)
    return True
