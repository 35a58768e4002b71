"""The read-only replay: the log from its start (MANIFEST ``log_start``) on
top of the newest snapshot that loads, built in memory without the LOCK and
without changing a byte. ``verify``, ``inspect``, ``digest`` and ``dump``
all read a store through here.

An open (``Store.open``) builds its state the same way, through the same
snapshot loader (``snapshot.load_base``) and the same check that the state
has a base (``snapshot.check_base``), then carries out what recovery found;
a reader only reports it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from . import manifest as _manifest
from ._types import ProgressFn
from ._backend import core as _core
from .recovery import Walker, WalkResult, clean_end_of
from .snapshot import Base, check_base, has_base, load_base, migration_floor

__all__ = ["reader_base", "reader_walker", "replay_readonly", "scan_log"]


def reader_base(path: str, man: dict[str, Any], registry: Any) -> Base:
    """The snapshot a reader's replay starts from, loaded into ``registry``
    (``load_base`` with its defaults: nothing changes on disk) when the log
    alone no longer makes the state: it does not start at LSN 1, or a
    migration reshaped the state. Otherwise ``Base(0, {}, [])`` (the whole
    log makes the state), and nothing is loaded. Whether the base will do
    is ``check_base``'s to say."""
    if _manifest.log_start(man, path) > 1 or migration_floor(man):
        return load_base(path, man, registry)
    return Base(0, {}, [])


def reader_walker(path: str, man: dict[str, Any], mode: str, registry: Any, *,
                  apply: bool = True, progress: Optional[ProgressFn] = None,
                  no_base: str = "raise",
                  fresh_registry: Optional[Callable[[], object]] = None) -> Walker:
    """A ``recovery.Walker`` set up as a reader replays: every segment from
    the log's start read and checked under ``mode`` (records the base
    snapshot holds are checked, not applied), from the base's source
    offsets, held to the MANIFEST's record of a clean close. Run it with
    ``run()``; a caller that wants the problems found before ``run()``
    raised reads ``walker.report``.

    ``apply`` False only checks the log (``registry`` then need not
    materialize tables), and no snapshot is loaded. With ``apply``, the
    base (``reader_base``) is loaded into ``registry``; when the state has
    none (``check_base``), ``no_base`` says what happens: "raise" raises
    ``no_base_error`` (CorruptionError, reason ``no_base``); "check" gives a
    walker that only checks the log, over ``fresh_registry()`` (a registry
    that materializes nothing: the one given may hold a snapshot's tables).
    ``walker.apply`` and ``walker.registry`` say which was made.
    """
    if no_base not in ("raise", "check"):
        raise ValueError(f"no_base is 'raise' or 'check', not {no_base!r}")
    start = _manifest.log_start(man, path)
    base = Base(0, {}, [])
    if apply:
        base = reader_base(path, man, registry)
        if no_base == "raise":
            check_base(path, man, base.lsn, start)
        elif not has_base(man, base.lsn, start):
            # No state to build (verify reports no_base); the log is still checked.
            apply, base = False, Base(0, {}, [])
            registry = fresh_registry() if fresh_registry is not None else registry
    walker = Walker(_core(), path, mode, registry, apply, start, base.lsn, None, progress)
    walker.offsets.update(base.offsets)
    walker.clean_end = clean_end_of(man, path)
    return walker


def replay_readonly(path: str, man: dict[str, Any], mode: str, registry: Any,
                    progress: Optional[ProgressFn] = None) -> WalkResult:
    """The state a reader sees, built in ``registry`` without changing a byte:
    the log replayed from its start, on top of the newest valid snapshot when
    the log no longer starts at LSN 1 (or a migration reshaped the state).
    Raises CorruptionError (reason ``no_base``) when no snapshot can start
    the state, and what the walk raises under ``mode``."""
    return reader_walker(path, man, mode, registry, progress=progress).run()


def scan_log(path: str, man: dict[str, Any], registry: Any,
             mode: str = "skip-corrupted") -> WalkResult:
    """The log from its start read and checked under ``mode``, nothing
    applied (no snapshot is loaded; ``registry`` learns the tables the log
    declares): what ``dump`` decodes the checked frames of."""
    return reader_walker(path, man, mode, registry, apply=False).run()
