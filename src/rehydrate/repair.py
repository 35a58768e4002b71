"""``rehydrate repair``: cut a damaged log back to its last good frame, keeping evidence.

Repair is point-in-time recovery done once, offline, under the LOCK: the log
is read as ``recovery="point-in-time"`` would read it, and everything from
the first problem on is taken out of ``wal/``. Before a byte is cut, the
whole segment is copied to ``quarantine/<segment>.broken`` (as etcd's repair
does) and fsynced; later segments are moved to ``quarantine/`` whole. After a
repair the log opens cleanly even under ``recovery="strict"``. A healthy
directory is never touched.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field

from . import _fileio
from . import manifest as _manifest
from ._backend import core as _core
from .errors import NotAStoreError, typed_io_errors
from .lockfile import DirLock
from .recovery import QUARANTINE_DIR, apply_actions, clean_end_of, walk
from .tables import TableRegistry


@dataclass
class RepairReport:
    """What a repair found and did (or, with ``dry_run``, would do)."""

    path: str
    dry_run: bool
    changed: bool = False
    last_lsn: int = 0
    problems: list = field(default_factory=list)  # Problem dicts, as verify reports them
    cut: list = field(default_factory=list)  # {"path", "offset", "bytes", "evidence"}
    moved: list = field(default_factory=list)  # {"path", "bytes", "to"}
    removed: list = field(default_factory=list)  # {"path", "bytes", "evidence"}

    @property
    def bytes_removed(self) -> int:
        return (sum(c["bytes"] for c in self.cut) + sum(m["bytes"] for m in self.moved)
                + sum(r["bytes"] for r in self.removed))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["bytes_removed"] = self.bytes_removed
        return d


def _broken_copy(path: str, qdir: str) -> str:
    """Copy a whole segment into quarantine/ as evidence, durably."""
    dst = os.path.join(qdir, os.path.basename(path) + ".broken")
    n = 1
    while os.path.exists(dst):  # an earlier repair's evidence is kept too
        dst = os.path.join(qdir, f"{os.path.basename(path)}.broken.{n}")
        n += 1
    tmp = dst + ".tmp"
    with open(path, "rb") as src, open(tmp, "wb", opener=_fileio.private) as out:
        shutil.copyfileobj(src, out)  # (copyfile would make it 0666 less the umask)
    fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _fileio.fsync(fd)
    finally:
        _fileio.close(fd)
    _fileio.rename(tmp, dst)
    _fileio.fsync_dir(qdir)
    return dst


@typed_io_errors
def repair(path, *, dry_run: bool = False) -> RepairReport:
    """Cut the log at its first problem; see the module docstring.

    Raises NotAStoreError, LockedError (a live store holds the directory),
    UnsupportedFormatError, StorageIOError; damage is reported, not raised.
    """
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, _manifest.MANIFEST_NAME)):
        raise NotAStoreError("no MANIFEST: not a rehydrate store", path=path)
    lock = DirLock(path)
    try:
        man = _manifest.read(path)
        clean_end = clean_end_of(man, path)
        result = walk(_core(), path, mode="point-in-time",
                      registry=TableRegistry(_core(), materialize=False), apply=False,
                      start_lsn=_manifest.log_start(man, path), clean_end=clean_end)
        report = RepairReport(path=path, dry_run=dry_run, last_lsn=result.report.last_lsn,
                              problems=[p.as_dict() for p in result.report.problems
                                        if p.kind != "foreign_file"])
        qdir = os.path.join(path, QUARANTINE_DIR)
        plan = []  # the walk's actions, minus its range evidence (whole copies instead)
        for a in result.actions:
            size = os.path.getsize(a.path)
            if a.op == "truncate":
                report.cut.append({"path": a.path, "offset": a.start, "bytes": size - a.start})
            elif a.op == "move_aside":
                report.moved.append({"path": a.path, "bytes": size,
                                     "to": os.path.join(qdir, os.path.basename(a.path)
                                                        + ".not-applied")})
            elif a.op == "remove":
                report.removed.append({"path": a.path, "bytes": size})
            if a.op != "evidence":
                plan.append(a)
        # A log that is not where its clean close left it (records lost
        # at a frame boundary, say) is repaired by accepting where it ends.
        moved_end = any(p["kind"] == "clean_end_mismatch" for p in report.problems)
        report.changed = bool(plan) or moved_end
        if dry_run or not report.changed:
            return report
        _fileio.makedir_durable(qdir)
        for item in report.cut + report.removed:
            item["evidence"] = _broken_copy(item["path"], qdir)
        if clean_end is not None:
            # First: the log is about to end somewhere else than recorded.
            man.pop("clean_end", None)
            _manifest.write(path, man)
        apply_actions(path, plan)
        return report
    finally:
        lock.release()


def summary_line(report: RepairReport, elapsed_s: float = 0.0) -> str:
    if not report.changed:
        return f"{report.path}: nothing to repair (last LSN {report.last_lsn})"
    verb = "would cut" if report.dry_run else "cut"
    return (f"{report.path}: {verb} {report.bytes_removed} bytes "
            f"({len(report.cut)} truncated, {len(report.moved)} moved, "
            f"{len(report.removed)} removed); log "
            f"{'would end' if report.dry_run else 'now ends'} at LSN {report.last_lsn}"
            + (f" [{elapsed_s:.2f} s]" if elapsed_s else ""))

