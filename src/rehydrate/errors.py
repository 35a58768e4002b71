"""Every error rehydrate raises, in one place.

Each subclass mixes in the builtin it resembles, so ``except ValueError`` and
friends keep working, and carries structured data: ``path``, ``offset``,
``lsn`` and a ``reason`` code (a short snake_case string, stable across
releases, the same one ``verify --json`` prints as a problem's ``kind``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Optional, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])


class RehydrateError(Exception):
    """Base of all rehydrate errors.

    Attributes: ``reason`` (stable code), ``path`` (file or directory or None),
    ``offset`` (byte offset in ``path`` or None), ``lsn`` (or None), ``detail``.
    """

    default_reason = "error"

    def __init__(
        self,
        detail: str = "",
        *,
        path: Optional[os.PathLike[str] | str] = None,
        offset: Optional[int] = None,
        lsn: Optional[int] = None,
        reason: Optional[str] = None,
    ) -> None:
        self.detail = detail
        self.path = os.fspath(path) if path is not None else None
        self.offset = offset
        self.lsn = lsn
        self.reason = reason or self.default_reason
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        if self.lsn is not None:
            where.append(f"LSN {self.lsn}")
        prefix = f"{', '.join(where)}: " if where else ""
        return f"{prefix}{self.detail} [{self.reason}]"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:  # keep the keyword-only data through pickling
        return (
            _rebuild,
            (type(self), self.detail, self.path, self.offset, self.lsn, self.reason),
            self.__dict__,  # subclass extras such as LockedError.holder_pid
        )


def _rebuild(cls: type[RehydrateError], detail: str, path: Optional[str], offset: Optional[int],
             lsn: Optional[int], reason: str) -> RehydrateError:
    return cls(detail, path=path, offset=offset, lsn=lsn, reason=reason)


class CorruptionError(RehydrateError, ValueError):
    """Bytes on disk that fail a check: checksum, structure, LSN order."""

    default_reason = "corruption"


class TornTailError(CorruptionError):
    """A partial batch at the end of the newest segment (what a crash leaves).

    Raised only under ``recovery="strict"``; other modes drop and report it.
    """

    default_reason = "torn_tail"


class UnsupportedFormatError(RehydrateError, ValueError):
    """A file written by a newer format version than this code reads."""

    default_reason = "unsupported_format"


class NotAStoreError(RehydrateError, FileNotFoundError):
    """The directory is missing, or holds files that are not a rehydrate store."""

    default_reason = "not_a_store"


class LockedError(RehydrateError, BlockingIOError):
    """Another writer holds the directory's LOCK; ``holder_pid`` names it."""

    default_reason = "locked"

    def __init__(self, detail: str = "", *, holder_pid: Optional[int] = None, **kw: Any) -> None:
        self.holder_pid = holder_pid
        super().__init__(detail, **kw)


class StoreClosedError(RehydrateError, RuntimeError):
    """A write (or read of live state) on a store that was closed."""

    default_reason = "closed"


class StoreFailedError(StoreClosedError):
    """The store hit a write or fsync error and stopped (fail-stop).

    Writes acknowledged before the failure are durable up to ``durable_lsn``;
    nothing after the failure is retried or acknowledged.
    """

    default_reason = "fail_stop"


class ForkedStoreError(StoreClosedError):
    """A write, sync, checkpoint or other change tried on a store this
    process inherited across ``fork()`` (docs/store.md, "Pre-forking
    servers"). A store belongs to the process that opened it, ``owner_pid``;
    in a forked child it is a read-only view of the state as of the fork.
    ``path`` is the store's directory, ``lsn`` the view's last LSN.
    """

    default_reason = "forked"

    def __init__(self, detail: str = "", *, owner_pid: Optional[int] = None, **kw: Any) -> None:
        self.owner_pid = owner_pid
        super().__init__(detail, **kw)


class StorageIOError(RehydrateError, OSError):
    """The operating system refused a file operation (permission, space, I/O).

    ``errno`` and ``path`` say which; the original OSError is the cause.
    """

    default_reason = "io_error"

    @classmethod
    def wrap(cls, err: OSError, path: Optional[os.PathLike[str] | str] = None) -> "StorageIOError":
        out = cls(err.strerror or str(err), path=err.filename or path)
        out.errno = err.errno
        return out


def typed_io_errors(fn: _F) -> _F:
    """Decorator: an OSError (not already a RehydrateError) leaves as StorageIOError."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RehydrateError:
            raise
        except OSError as e:
            raise StorageIOError.wrap(e, args[0] if args else None) from e

    return wrapper  # type: ignore[return-value]


class ConfigError(RehydrateError, ValueError):
    """A bad argument to ``Store.open`` or ``verify`` (mode name, size, ...)."""

    default_reason = "config"


class UnsupportedKeyError(RehydrateError, TypeError):
    """A key that is not ``bytes``, ``str`` or an ``int`` in the int64 range."""

    default_reason = "unsupported_key"


class ValueEncodingError(RehydrateError, TypeError):
    """A value msgpack cannot encode."""

    default_reason = "unencodable_value"


class InvalidOperationError(RehydrateError, TypeError):
    """An op that cannot apply: ``incr`` on a non-number, int64 overflow."""

    default_reason = "invalid_operation"


class BatchTooLargeError(RehydrateError, ValueError):
    """A batch larger than one frame may hold (``MAX_FRAME_PAYLOAD_BYTES``)."""

    default_reason = "batch_too_large"


class WarmupError(RehydrateError, RuntimeError):
    """A warmup phase failed (docs/warmup.md). ``phase`` names it,
    ``elapsed_s`` is how long it had run, ``stack`` is where a hook was when
    it was given up on (its Python stack, or None)."""

    default_reason = "warmup"

    def __init__(self, detail: str = "", *, phase: Optional[str] = None,
                 elapsed_s: Optional[float] = None, stack: Optional[str] = None,
                 **where: Any) -> None:
        self.phase = phase
        self.elapsed_s = elapsed_s
        self.stack = stack
        super().__init__(detail, **where)


class RetryableError(RehydrateError):
    """Raised by a ``populate`` or ``prime`` hook (or by an archive's
    filesystem) for a failure that another try may not meet: the phase
    tries again with exponential backoff and full jitter, within its budget
    (docs/warmup.md, "Retries"). Any other error fails the phase at once."""

    default_reason = "retryable"


class StallError(WarmupError):
    """No progress for ``stall_s`` seconds in a phase."""

    default_reason = "stall"


class PhaseTimeout(WarmupError):
    """A phase ran past its budget."""

    default_reason = "phase_timeout"


class MemoryBudgetError(WarmupError):
    """The open is predicted to need more memory than allowed or available
    (raised in the plan phase, before anything is loaded)."""

    default_reason = "memory_budget"


class CriteriaError(WarmupError):
    """A phase's success criterion returned something other than True, or raised."""

    default_reason = "criteria"


class MigrationError(RehydrateError, RuntimeError):
    """A migration failed or was refused (docs/migrations.md): ``migration``
    names it, ``invariant`` the invariant that failed (or None), ``key`` the
    record a per-record migration failed on (or None). The state and the
    directory are as they were before it."""

    default_reason = "migration"

    def __init__(self, detail: str = "", *, migration: Optional[str] = None,
                 invariant: Optional[str] = None, key: Any = None, **where: Any) -> None:
        self.migration = migration
        self.invariant = invariant
        self.key = key
        super().__init__(detail, **where)


class BackpressureError(RehydrateError, TimeoutError):
    """A write during a background open waited ``admission_timeout_s`` for
    room (the pending-write limits), for the log's end to be known, or for
    its table to be ready, and was refused: nothing of it was logged."""

    default_reason = "backpressure"


class ReadOnlyError(RehydrateError, PermissionError):
    """A write (or sync, checkpoint) on a store that only reads: a standby
    (``Store.open_standby``) or a reader (``Store.open(path, readonly=True)``).
    Writes go to the primary (docs/replication.md)."""

    default_reason = "read_only"


class MovedError(StoreClosedError):
    """A write on a primary that handed its writes over (docs/replication.md,
    "Handoff"), or whose epoch is older than its directory's (it was fenced).
    ``address``: the new primary's, when the handoff named one; ``epoch``:
    the directory's epoch now. Nothing of the refused write was logged."""

    default_reason = "moved"

    def __init__(self, detail: str = "", *, address: Optional[str] = None,
                 epoch: Optional[int] = None, **kw: Any) -> None:
        self.address = address
        self.epoch = epoch
        super().__init__(detail, **kw)


class ReplicationError(RehydrateError, ConnectionError):
    """Following or talking to a primary failed (docs/replication.md):
    ``reason`` says why (``foreign_store``, ``protocol``, ``unauthorized``,
    ``trimmed``, ``ahead``, ``bad_message``, ``connection``, ``timeout``, ...);
    ``peer`` names the primary (a URL without its token, or a directory)."""

    default_reason = "replication"

    def __init__(self, detail: str = "", *, peer: Optional[str] = None, **kw: Any) -> None:
        self.peer = peer
        super().__init__(detail, **kw)

    def _message(self) -> str:
        text = super()._message()
        return f"{self.peer}: {text}" if self.peer else text


class HandoffError(ReplicationError):
    """A promote that did not happen: the primary stayed primary (reason
    ``timeout``, ``refused``, ``primary_unreachable``, ``failed``, ...)."""

    default_reason = "handoff"


class ArchiveError(RehydrateError, OSError):
    """The archive in object storage (docs/archive.md): unreachable, missing
    an object its manifest lists, holding bytes that fail a check, another
    store's, or unable to give the asked-for point. ``reason`` says which
    (``unreachable``, ``missing_object``, ``bad_manifest``, ``bad_object``,
    ``corrupt``, ``foreign_store``, ``diverged``, ``no_base``, ``no_target``,
    ``not_empty``, ...); ``uri`` names the archive (without credentials),
    ``object`` the object in it (``offset`` is within that object)."""

    default_reason = "archive"

    def __init__(self, detail: str = "", *, uri: Optional[str] = None,
                 object: Optional[str] = None, **kw: Any) -> None:
        self.uri = uri
        self.object = object
        super().__init__(detail, **kw)

    def _message(self) -> str:
        text = super()._message()
        where = "/".join(x for x in (self.uri, self.object) if x)
        return f"{where}: {text}" if where else text


__all__ = [
    "RehydrateError",
    "ArchiveError",
    "BackpressureError",
    "MigrationError",
    "CorruptionError",
    "TornTailError",
    "UnsupportedFormatError",
    "NotAStoreError",
    "LockedError",
    "StoreClosedError",
    "StoreFailedError",
    "ForkedStoreError",
    "ConfigError",
    "StorageIOError",
    "UnsupportedKeyError",
    "ValueEncodingError",
    "InvalidOperationError",
    "BatchTooLargeError",
    "WarmupError",
    "StallError",
    "PhaseTimeout",
    "CriteriaError",
    "MemoryBudgetError",
    "ReadOnlyError",
    "MovedError",
    "ReplicationError",
    "HandoffError",
]
