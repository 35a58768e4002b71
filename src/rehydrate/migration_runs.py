"""Online-migration runs as another process sees them (docs/migrations.md,
"Routing and automatic revert"): the runs the MANIFEST records
(``migration_runs``) and, while a store serves one, the live runs' status
dicts in ``migration-runs.json`` in the store directory.

Both are read as untrusted input: a missing, unreadable or damaged file is
reported as a problem string, never raised, and only fields of the expected
types are shown.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Optional

__all__ = ["RUNS_FILE", "read_live", "recorded", "describe_live", "describe_recorded"]

#: The live runs' status dicts, written by the serving store (atomically, by rename).
RUNS_FILE = "migration-runs.json"
#: A larger file is refused unread: a status list is a few KiB.
MAX_BYTES = 4 << 20


def read_live(directory: str) -> tuple[Optional[list[dict[str, Any]]], Optional[str]]:
    """(the live runs' status dicts, None), or (None, why not): the file
    missing, unreadable, too large, not JSON, or not a list of runs."""
    path = os.path.join(directory, RUNS_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None, f"no {RUNS_FILE} (no store is running an online migration here)"
    except OSError as e:
        return None, f"{RUNS_FILE} cannot be read: {e.strerror or e}"
    if len(raw) > MAX_BYTES:
        return None, f"{RUNS_FILE} is damaged: larger than {MAX_BYTES} bytes"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return None, f"{RUNS_FILE} is damaged: not JSON ({e})"
    if not isinstance(data, list) or not all(isinstance(r, dict) and isinstance(r.get("id"), str)
                                            for r in data):
        return None, f"{RUNS_FILE} is damaged: not a list of runs with an id each"
    return data, None


def recorded(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The MANIFEST's ``migration_runs`` records that are dicts with an id
    (others left out: the MANIFEST's checksum vouches for its bytes, not
    for what an older or newer writer put there)."""
    runs = manifest.get("migration_runs")
    if not isinstance(runs, list):
        return []
    return [r for r in runs if isinstance(r, dict) and isinstance(r.get("id"), str)]


def _num(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _fmt(v: Any, spec: str, unknown: str = "?") -> str:
    n = _num(v)
    return format(n, spec) if n is not None else unknown


def _text(v: Any) -> str:
    return str(v) if isinstance(v, (str, int)) and not isinstance(v, bool) else "?"


def describe_recorded(run: Mapping[str, Any]) -> str:
    """One line for a recorded run."""
    line = (f"{run['id']} run {_text(run.get('run'))}: table {_text(run.get('table'))}, "
            f"{_text(run.get('state'))}, outcome {_text(run.get('outcome'))}")
    reason = run.get("reason")
    return line + (f" ({reason})" if isinstance(reason, str) else "")


def describe_live(run: Mapping[str, Any]) -> list[str]:
    """Lines for a live run: state, progress, fraction, per-path reads,
    errors and p99, divergences."""
    progress = _num(run.get("progress"))
    lines = [f"{run['id']} run {_text(run.get('run'))}: table {_text(run.get('table'))} "
             f"v{_text(run.get('from_version'))} -> v{_text(run.get('to_version'))}, "
             f"{_text(run.get('state'))}, progress "
             f"{format(progress * 100, '.1f') + '%' if progress is not None else '?'} "
             f"({_fmt(run.get('built'), '.0f')} of {_fmt(run.get('total'), '.0f')} built), "
             f"fraction {_fmt(run.get('fraction'), 'g')}"]
    paths = run.get("paths")
    paths = paths if isinstance(paths, dict) else {}
    for name in ("old", "new"):
        p = paths.get(name)
        p = p if isinstance(p, dict) else {}
        p99 = _num(p.get("latency_p99_s"))
        lines.append(f"  {name} path: {_fmt(p.get('reads'), '.0f', '0')} reads, "
                     f"{_fmt(p.get('errors'), '.0f', '0')} errors, p99 "
                     + (f"{p99 * 1e6:.1f} us" if p99 is not None else "-"))
    lines.append(f"  compared {_fmt(run.get('compared'), '.0f', '0')}, divergences "
                 f"{_fmt(run.get('divergences'), '.0f', '0')}, compare errors "
                 f"{_fmt(run.get('compare_errors'), '.0f', '0')}")
    reason = run.get("reason")
    if isinstance(reason, str):
        lines.append(f"  reverted: {reason}")
    return lines
