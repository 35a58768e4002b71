"""What a store does when its process forks (docs/store.md, "Pre-forking
servers").

A store belongs to the process that opened it. Each live store registers
three callbacks here; ``os.fork()`` runs them: before the fork every
store's ``hold`` (which takes its lock, so no write is half-applied in the
child's copy), after it ``release`` in the parent and ``inherited`` in
the child (which turns the store into a read-only view as of the fork).
The callbacks are held weakly: a store dropped without close() is not
kept alive by them.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable

_Callbacks = tuple["weakref.WeakMethod[Callable[[], None]]", ...]
# id(owner) -> (hold, release, inherited). _LOCK guards it; it is never
# taken while a store's lock is held. Reentrant because the fork hooks
# hold it while they run callbacks, and an allocation there may start a
# garbage collection whose finalizer (a dropped store's) calls untrack on
# the same thread: a plain Lock deadlocked the fork.
_TRACKED: dict[int, _Callbacks] = {}
_LOCK = threading.RLock()


def track(owner: object, hold: Callable[[], None], release: Callable[[], None],
          inherited: Callable[[], None]) -> None:
    """Run ``owner``'s bound methods around every fork until ``untrack``."""
    callbacks = tuple(weakref.WeakMethod(m) for m in (hold, release, inherited))
    with _LOCK:
        _TRACKED[id(owner)] = callbacks
    weakref.finalize(owner, untrack, id(owner))


def untrack(owner: object | int) -> None:
    with _LOCK:
        _TRACKED.pop(owner if isinstance(owner, int) else id(owner), None)


def _each(which: int) -> None:
    for callbacks in list(_TRACKED.values()):
        method = callbacks[which]()
        if method is not None:
            method()


def _before_fork() -> None:
    _LOCK.acquire()
    _each(0)


def _after_fork_in_parent() -> None:
    _each(1)
    _LOCK.release()


def _after_fork_in_child() -> None:
    # (The views stay tracked: a grandchild's fork takes their locks too.)
    _each(2)
    _LOCK.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
