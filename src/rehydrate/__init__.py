# rehydrate: rebuild a service's in-memory state at startup from its
# write-ahead log, and keep writing that log while the service runs.
#
# Layout: one module per role; docs/architecture.md is the map. store.py is
# the public Store (on lifecycle.py and writes.py); opening.py, journal.py and
# checkpointing.py do the open, the log writing and the checkpoints. The hot
# code lives in the native core `rehydrate._core` (_core/, Cython + C) with its
# pure-Python twin in `rehydrate._pure`; `_backend.py` picks one.
# docs/FORMAT.md is the on-disk spec.
"""rehydrate: fast, safe, observable rebuilds of in-memory state from a WAL."""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from .errors import (
    ArchiveError,
    BackpressureError,
    BatchTooLargeError,
    ConfigError,
    CorruptionError,
    CriteriaError,
    ForkedStoreError,
    HandoffError,
    InvalidOperationError,
    LockedError,
    MemoryBudgetError,
    MigrationError,
    MovedError,
    NotAStoreError,
    PhaseTimeout,
    ReadOnlyError,
    RehydrateError,
    ReplicationError,
    RetryableError,
    StallError,
    StorageIOError,
    StoreClosedError,
    StoreFailedError,
    TornTailError,
    UnsupportedFormatError,
    UnsupportedKeyError,
    ValueEncodingError,
    WarmupError,
)
from .digest import format_digest, parse_digest
from .gates import Gate, lag_below, migration_at, phase_done, table_ready
from .kinds import DictTable, StateType
from .migrations import MigrationDriftWarning, Migrations
from .per_record import DELETE
from .numeric import NumericTable
from .recovery import MODES as RECOVERY_MODES
from .recovery import Problem, RecoveryReport
from .batch import Batch
from .options import SYNC_MODES
from .store import Store
from .migration_rollback import rollback
from .crashloop import clear_failures
from .archive_restore import restore
from .verify import inspect, verify
from .warmup import PHASES, Warmup

__version__ = "0.1.0"

# Loaded when first used (shutdown.py): a service that never asks for it
# pays nothing for it at import.
_LAZY = ("close_on_signals", "ShutdownHandle")
if _TYPE_CHECKING:
    from .shutdown import ShutdownHandle, close_on_signals


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'rehydrate' has no attribute {name!r}")
    from . import shutdown

    value = getattr(shutdown, name)
    globals()[name] = value
    return value


__all__ = [
    "PHASES",
    "RECOVERY_MODES",
    "SYNC_MODES",
    "ArchiveError",
    "BackpressureError",
    "Batch",
    "BatchTooLargeError",
    "ConfigError",
    "CorruptionError",
    "CriteriaError",
    "DELETE",
    "DictTable",
    "ForkedStoreError",
    "Gate",
    "HandoffError",
    "InvalidOperationError",
    "LockedError",
    "MemoryBudgetError",
    "MigrationDriftWarning",
    "MigrationError",
    "Migrations",
    "MovedError",
    "NotAStoreError",
    "NumericTable",
    "PhaseTimeout",
    "Problem",
    "ReadOnlyError",
    "RecoveryReport",
    "RehydrateError",
    "ReplicationError",
    "RetryableError",
    "ShutdownHandle",
    "StallError",
    "StateType",
    "StorageIOError",
    "Store",
    "StoreClosedError",
    "StoreFailedError",
    "TornTailError",
    "UnsupportedFormatError",
    "UnsupportedKeyError",
    "ValueEncodingError",
    "Warmup",
    "WarmupError",
    "__version__",
    "clear_failures",
    "close_on_signals",
    "format_digest",
    "inspect",
    "lag_below",
    "migration_at",
    "parse_digest",
    "phase_done",
    "restore",
    "rollback",
    "table_ready",
    "verify",
]
