"""The options of ``Store.open``: their defaults and their checks.

``check_options`` runs before anything on disk is touched, so a bad option
is a ConfigError that changes nothing (docs/store.md, "Options").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ._types import ProgressFn, TableKinds
from .crashloop import DEFAULT_MAX_FAILED_OPENS, check_max_failed_opens
from .errors import ConfigError
from .kinds import resolve_kinds
from .migrations import Migrations
from .recovery import check_mode
from .warmup import Warmup

SYNC_MODES = ("always", "interval", "none")
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_SYNC_INTERVAL_MS = 50
MIN_SEGMENT_BYTES = 4096
DEFAULT_KEEP_SNAPSHOTS = 2
DEFAULT_ARCHIVE_EVERY_S = 1.0
DEFAULT_ARCHIVE_RETENTION_S = 24 * 3600.0
# An online migration's build (store.start_migration): at most this long a
# slice, at most this share of the wall time. Chosen for the foreground's
# p99, not the build's speed (docs/benchmarks.md, "Online migrations").
DEFAULT_MIGRATION_SLICE_MS = 0.25
DEFAULT_MIGRATION_MAX_DUTY = 0.25


@dataclass(frozen=True)
class Options:
    """Checked options of one open (``kinds`` is ``tables=`` resolved)."""

    create: bool
    sync: str
    recovery: str
    segment_bytes: int
    sync_interval_ms: float
    progress: Optional[ProgressFn]
    kinds: dict[str, tuple[int, Any]]
    keep_snapshots: int
    checkpoint_every_bytes: Optional[int]
    checkpoint_every_s: Optional[float]
    warmup: Optional[Warmup]
    max_memory_bytes: Optional[int]
    migrations: Optional[Migrations]
    strict_migrations: bool
    archive: Any = None
    archive_every_s: float = DEFAULT_ARCHIVE_EVERY_S
    archive_retention_s: float = DEFAULT_ARCHIVE_RETENTION_S
    max_failed_opens: int = DEFAULT_MAX_FAILED_OPENS
    degraded_readyz: int = 200

    @property
    def auto_checkpoint(self) -> bool:
        """Whether a thread checkpoints on its own (by bytes or by time)."""
        return bool(self.checkpoint_every_bytes or self.checkpoint_every_s)


# The keyword arguments of Store.open (and of Store.open_background, with
# its intake limits): check_options's.
OPTION_NAMES = ("create", "sync", "recovery", "segment_bytes", "sync_interval_ms", "progress",
                "tables", "keep_snapshots", "checkpoint_every_bytes", "checkpoint_every_s",
                "warmup", "max_memory_bytes", "migrations", "strict_migrations", "archive",
                "archive_every_s", "archive_retention_s", "max_failed_opens",
                "degraded_readyz")


def _positive_number(x: Any) -> bool:
    return type(x) in (int, float) and 0 < x < float("inf")


def check_options(
    *,
    create: bool = True,
    sync: str = "interval",
    recovery: str = "tolerate-tail",
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    sync_interval_ms: float = DEFAULT_SYNC_INTERVAL_MS,
    progress: Optional[ProgressFn] = None,
    tables: Optional[TableKinds] = None,
    keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
    checkpoint_every_bytes: Optional[int] = None,
    checkpoint_every_s: Optional[float] = None,
    warmup: Optional[Warmup] = None,
    max_memory_bytes: Optional[int] = None,
    migrations: Optional[Migrations] = None,
    strict_migrations: bool = False,
    archive: Any = None,
    archive_every_s: float = DEFAULT_ARCHIVE_EVERY_S,
    archive_retention_s: float = DEFAULT_ARCHIVE_RETENTION_S,
    max_failed_opens: int = DEFAULT_MAX_FAILED_OPENS,
    degraded_readyz: int = 200,
) -> Options:
    """The options of ``Store.open``, checked; ConfigError for a bad one."""
    if sync not in SYNC_MODES:
        raise ConfigError(f"unknown sync mode {sync!r}; expected one of {', '.join(SYNC_MODES)}")
    check_mode(recovery)
    if not isinstance(segment_bytes, int) or segment_bytes < MIN_SEGMENT_BYTES:
        raise ConfigError(f"segment_bytes must be an int >= {MIN_SEGMENT_BYTES}")
    if not _positive_number(sync_interval_ms):
        raise ConfigError("sync_interval_ms must be a positive number")
    if type(keep_snapshots) is not int or keep_snapshots < 1:
        raise ConfigError("keep_snapshots must be an int >= 1")
    if checkpoint_every_bytes is not None and (type(checkpoint_every_bytes) is not int
                                               or checkpoint_every_bytes < 1):
        raise ConfigError("checkpoint_every_bytes must be a positive int or None")
    if checkpoint_every_s is not None and not _positive_number(checkpoint_every_s):
        raise ConfigError("checkpoint_every_s must be a positive number or None")
    kinds = resolve_kinds(tables)
    if warmup is not None and not isinstance(warmup, Warmup):
        raise ConfigError("warmup must be a rehydrate.Warmup")
    if max_memory_bytes is not None and (type(max_memory_bytes) is not int
                                         or max_memory_bytes < 1):
        raise ConfigError("max_memory_bytes must be a positive int or None")
    if migrations is not None:
        if not isinstance(migrations, Migrations):
            raise ConfigError("migrations must be a rehydrate.Migrations")
        migrations.check()
    if type(strict_migrations) is not bool:
        raise ConfigError("strict_migrations must be True or False")
    if archive is not None:
        from .objstore import check_target

        check_target(archive)
    if not _positive_number(archive_every_s):
        raise ConfigError("archive_every_s must be a positive number")
    if type(archive_retention_s) not in (int, float) or not 0 <= archive_retention_s < float("inf"):
        raise ConfigError("archive_retention_s must be a number >= 0")
    check_max_failed_opens(max_failed_opens)
    if type(degraded_readyz) is not int or degraded_readyz not in (200, 503):
        raise ConfigError(f"degraded_readyz must be 200 or 503, not {degraded_readyz!r}")
    return Options(create=create, sync=sync, recovery=recovery, segment_bytes=segment_bytes,
                   sync_interval_ms=sync_interval_ms, progress=progress, kinds=kinds,
                   keep_snapshots=keep_snapshots,
                   checkpoint_every_bytes=checkpoint_every_bytes,
                   checkpoint_every_s=checkpoint_every_s, warmup=warmup,
                   max_memory_bytes=max_memory_bytes, migrations=migrations,
                   strict_migrations=strict_migrations, archive=archive,
                   archive_every_s=float(archive_every_s),
                   archive_retention_s=float(archive_retention_s),
                   max_failed_opens=max_failed_opens, degraded_readyz=degraded_readyz)
