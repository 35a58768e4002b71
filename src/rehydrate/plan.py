"""The open plan: what an open will read, how long it should take and how
much memory it should need, decided before anything is loaded
(docs/warmup.md, "Plan and memory preflight").

The prediction comes from HISTORY, the last opens of this directory (bytes
read and seconds per phase), or, with no history, from rates measured on
this kind of machine. HISTORY (history.py) is like HINTS: not authoritative, untrusted
when read (a bad file is ignored), and its opens are written without fsync.
"""

from __future__ import annotations

from typing import Any

import os
import statistics
import time

from . import history as _history
from . import _format as F
from . import hints as _hints
from . import manifest as _manifest
from ._backend import core as _core
from ._sysinfo import proc_kb_field
from .errors import MemoryBudgetError
from .snapshot import SNAPSHOTS_DIR, read_meta, snapshot_name
from .wal import WAL_DIR, list_segments, segment_version

HISTORY_NAME = _history.HISTORY_NAME
HISTORY_KEEP = 20
# Without history: rates measured here (docs/benchmarks.md): a snapshot's
# files at ~2 GB/s (1.8M keys, 210 MB, 0.09 s), the log at ~0.25 GB/s
# (10M ops, 368 MB, ~1.4 s).
DEFAULT_SNAPSHOT_BPS = 2.0e9
DEFAULT_REPLAY_BPS = 2.5e8
BASE_MEMORY_BYTES = 64 << 20  # the interpreter and the library, roughly
# The newest segment's frame headers read to count its records (a few ms);
# past that, its records are extrapolated from the frames read.
MAX_COUNTED_FRAMES = 256
COUNT_READ_BYTES = 256 << 10


def _read_history(path: str) -> list:
    return _valid_opens(_history.read(path).opens)


def _valid_opens(opens: list) -> list:
    keys = ("snapshot_bytes", "snapshot_s", "wal_bytes", "replay_s", "total_s")
    return [o for o in opens if isinstance(o, dict) and
            all(type(o.get(k)) in (int, float) and o[k] >= 0 for k in keys)]


def record_open(path: str, plan: dict, report: dict, clear_failures: bool = False) -> int:
    """Append this open to HISTORY (best effort: a failure is ignored).
    ``clear_failures``: a full open, which also ends the crash-loop guard's
    count (crashloop.py); how many failures that cleared."""
    phases = {p["name"]: p["duration_s"] for p in report["phases"]}
    # A background open's replay phase also holds its checking pass; what
    # is kept is what a plain open would have spent, which is what is predicted.
    check_s = next((p.get("writes_taken_after_s") or 0.0 for p in report["phases"]
                    if p["name"] == "replay"), 0.0)
    entry = {"at": time.time(), "snapshot_bytes": plan["snapshot"]["bytes"],
             "snapshot_s": phases.get("snapshot", 0.0), "wal_bytes": plan["wal_bytes"],
             "replay_s": phases.get("replay", 0.0) - check_s,
             "total_s": report["total_s"] - check_s}
    found = _history.read(path)
    if found.newer:
        return 0  # a newer version's file: left as it is (history.py)
    opens = (_valid_opens(found.opens) + [entry])[-HISTORY_KEEP:]
    cleared = len(found.failures) if clear_failures else 0
    failures = [] if clear_failures else found.failures
    try:
        # Durable when failures are kept or cleared: the guard's count must
        # not come back, nor go, with a crash.
        _history.write(path, opens, failures, durable=bool(found.failures))
    except OSError:
        return 0
    return cleared


def _snapshot_part(path: str, man: dict) -> dict:
    """The newest listed snapshot whose META reads: {lsn, bytes, keys}."""
    for lsn in sorted(man.get("snapshots") or [], reverse=True):
        if type(lsn) is not int:
            continue
        spath = os.path.join(path, SNAPSHOTS_DIR, snapshot_name(lsn))
        try:
            meta = read_meta(spath)
        except (OSError, ValueError):
            continue
        tables = [t for t in meta["tables"] if isinstance(t, dict)]
        # A native open reads a kv table's image, not its Arrow copy.
        size = sum((t["image"] if isinstance(t.get("image"), dict) else t).get("bytes") or 0
                   for t in tables)
        keys = sum(t.get("keys") or 0 for t in tables if type(t.get("keys")) is int)
        return {"lsn": lsn, "bytes": int(size), "keys": keys}
    return {"lsn": 0, "bytes": 0, "keys": 0}


def _median_rate(opens, nbytes: str, secs: str, default: float) -> tuple:
    rates = [o[nbytes] / o[secs] for o in opens if o[nbytes] > 0 and o[secs] > 0]
    if not rates:
        return default, "calibrated"
    return statistics.median(rates), "history"


def _count_newest(core, seg, after_lsn: int, max_frames: int) -> tuple:
    """(records above ``after_lsn`` in the newest segment, exact?) from its
    frame headers alone: nothing past a header is read. Frames past
    ``max_frames`` are estimated by the records per byte of those read; a
    header that fails its own checks (a torn tail, damage) ends the count,
    as it ends a replay."""
    records, read, capped = 0, 0, False
    last_lsn: Any = None  # an int once a frame is read (always, when capped)
    off = start = F.SEGMENT_HEADER_BYTES
    try:
        with open(seg.path, "rb") as f:
            # Small frames' headers come from one read; a big frame's next
            # header is read where it lies.
            buf = os.pread(f.fileno(), min(seg.size, COUNT_READ_BYTES), 0)
            version = segment_version(buf)  # its frames' layout
            hb = F.frame_header_bytes(version)
            while off + hb <= seg.size:
                if read >= max(1, max_frames):
                    capped = True
                    break
                if off + hb <= len(buf):
                    h = core.parse_frame_header(buf, off, version)
                else:
                    h = core.parse_frame_header(os.pread(f.fileno(), hb, off), 0, version)
                end = off + hb + (h.stored_len if h else 0)
                if h is None or core.header_problem(h) is not None or end > seg.size:
                    return records, True
                records += max(0, h.first_lsn + h.count - 1 - max(h.first_lsn - 1, after_lsn))
                last_lsn = h.first_lsn + h.count - 1
                read += 1
                off = end
    except OSError:
        return records, False  # an open will say what is wrong; this is a plan
    if not capped:
        return records, True
    # Capped: the rest of the segment at the density of what was read.
    rest = int((seg.size - off) * (last_lsn - seg.first_lsn + 1) / (off - start))
    return records + max(0, rest - max(0, after_lsn - last_lsn)), False


def log_records(segments, after_lsn: int,
                max_frames: int = MAX_COUNTED_FRAMES) -> tuple:
    """(records an open replays after a snapshot at ``after_lsn``, exact?).

    Segments are named by their first LSN and LSNs have no gaps, so every
    segment but the newest holds exactly the LSNs up to the next one's
    first: counted from the names. The newest is counted from its frame
    headers (``_count_newest``)."""
    total, exact = 0, True
    for seg, nxt in zip(segments, segments[1:] + [None]):
        if nxt is not None:
            total += max(0, nxt.first_lsn - max(seg.first_lsn, after_lsn + 1))
        else:
            n, exact = _count_newest(_core(), seg, after_lsn, max_frames)
            total += n
    return total, exact


def make_plan(path: str, man=None) -> dict:
    """What an open of ``path`` will do: the snapshot and segments it reads,
    their bytes, an estimate of records, the predicted duration and the
    predicted peak memory. Reads no table data."""
    man = _manifest.read(path) if man is None else man
    snap = _snapshot_part(path, man)
    segs = list_segments(os.path.join(path, WAL_DIR))[0]
    todo, read = [], []
    for seg, nxt in zip(segs, segs[1:] + [None]):
        if nxt is not None and nxt.first_lsn - 1 <= snap["lsn"]:
            continue  # wholly in the snapshot: not read
        todo.append({"path": seg.path, "first_lsn": seg.first_lsn, "bytes": seg.size})
        read.append(seg)
    # Only the records after the snapshot replay (those before it in the
    # first segment are read and checked, not applied).
    n_log, log_exact = log_records(read, snap["lsn"])
    wal_bytes = sum(s["bytes"] for s in todo)
    opens = _read_history(path)
    snap_bps, snap_src = _median_rate(opens, "snapshot_bytes", "snapshot_s",
                                      DEFAULT_SNAPSHOT_BPS)
    replay_bps, replay_src = _median_rate(opens, "wal_bytes", "replay_s", DEFAULT_REPLAY_BPS)
    overhead = statistics.median([max(0.0, o["total_s"] - o["snapshot_s"] - o["replay_s"])
                                  for o in opens]) if opens else 0.01
    predicted_s = snap["bytes"] / snap_bps + wal_bytes / replay_bps + overhead
    found = _hints.read(path)
    if found:
        # Capped by what the files could hold, as the size hints are (HINTS
        # is untrusted): a hostile hint must not refuse an open.
        memory = 0
        for h in found.values():
            keys, arena = _hints.capped(h, snap["bytes"] + wal_bytes)
            memory += arena + 16 * F.slot_capacity(keys)
        memory_src = "hints"
    else:
        memory = int(1.5 * (snap["bytes"] + wal_bytes))
        memory_src = "file sizes"
    return {"path": path, "snapshot": snap, "segments": todo, "wal_bytes": wal_bytes,
            "bytes": snap["bytes"] + wal_bytes,
            "records_estimate": snap["keys"] + n_log,
            "log_records": n_log, "log_records_exact": log_exact,
            "predicted_s": predicted_s,
            "predicted_phases_s": {"snapshot": snap["bytes"] / snap_bps,
                                   "replay": wal_bytes / replay_bps},
            "predicted_from": {"snapshot": snap_src, "replay": replay_src},
            "predicted_peak_bytes": BASE_MEMORY_BYTES + memory,
            "memory_from": memory_src, "history_opens": len(opens)}


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is none)."""
    return proc_kb_field("/proc/meminfo", "MemAvailable")


def preflight(plan: dict, max_memory_bytes=None) -> None:
    """MemoryBudgetError when the predicted peak passes ``max_memory_bytes``
    or the memory available now, before anything is loaded."""
    need = plan["predicted_peak_bytes"]
    avail = available_memory_bytes()
    for limit, what in ((max_memory_bytes, "max_memory_bytes"), (avail, "available memory")):
        if limit is not None and need > limit:
            raise MemoryBudgetError(
                f"the open is predicted to need {need / 2**20:,.0f} MiB "
                f"(from {plan['memory_from']}), more than {what} "
                f"({limit / 2**20:,.0f} MiB)", path=plan["path"], phase="plan")
