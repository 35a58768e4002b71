"""HISTORY, the directory's record of its last opens (docs/FORMAT.md,
"HISTORY"): the opens' sizes and timings that the plan predicts from
(plan.py), and the failed opens that the crash-loop guard counts
(crashloop.py). This module reads and writes the file; each of those two
keeps its own section.

The file is untrusted when read: damaged, too big, or of a format this
version does not know, it is ignored (``History.problem`` says why) and
never fatal. A file of a newer format is never overwritten, so a rollback
to this version does not erase what the newer one recorded.

Format 1 has ``opens`` only; format 2 adds ``failures``. A file with no
failures is written as format 1, as before, best effort and without an
fsync (it is a prediction). Once it holds failures, or when they are
cleared, it is written atomically and durably (temporary file, fsync,
rename, fsync of the directory): a crash while a failure is recorded leaves
the old file or the new one, whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from . import _fileio

HISTORY_NAME = "HISTORY"
#: The newest format written (with failures); format 1 holds opens only.
HISTORY_FORMAT = 2
FORMATS = (1, 2)
MAX_HISTORY_BYTES = 1 << 20


@dataclass
class History:
    """What HISTORY holds: ``opens`` and ``failures`` (raw entries, checked
    by their readers), ``problem`` (why the file was ignored; None when read
    or absent) and ``newer`` (its format is newer than this version's)."""

    opens: list[Any] = field(default_factory=list)
    failures: list[Any] = field(default_factory=list)
    problem: Optional[str] = None
    newer: bool = False


def read(path: str) -> History:
    """HISTORY of the store at ``path``; an empty History when absent or
    ignored (``problem`` then says why)."""
    hpath = os.path.join(path, HISTORY_NAME)
    try:
        if os.path.getsize(hpath) > MAX_HISTORY_BYTES:
            return History(problem=f"larger than {MAX_HISTORY_BYTES} bytes")
        data = json.loads(_fileio.read_file(hpath))
    except FileNotFoundError:
        return History()
    except OSError as e:
        return History(problem=f"unreadable: {e}")
    except ValueError as e:
        return History(problem=f"not JSON ({e})")
    if not isinstance(data, dict) or type(data.get("format")) is not int:
        return History(problem="not a HISTORY object with a format number")
    fmt = data["format"]
    if fmt > HISTORY_FORMAT:
        return History(problem=f"format {fmt}, newer than this version's "
                               f"({HISTORY_FORMAT})", newer=True)
    if fmt not in FORMATS:
        return History(problem=f"unknown format {fmt}")
    opens, failures = data.get("opens"), data.get("failures", [])
    if not isinstance(opens, list) or not isinstance(failures, list):
        return History(problem="its opens or failures are not lists")
    return History(opens=opens, failures=failures)


def write(path: str, opens: list[Any], failures: list[Any], durable: bool) -> None:
    """Replace HISTORY. ``durable``: atomically and fsynced (else best
    effort, the way a prediction is written). Raises OSError."""
    hpath = os.path.join(path, HISTORY_NAME)
    doc: dict[str, Any] = {"format": 2 if failures else 1, "opens": opens}
    if failures:
        doc["failures"] = failures
    if durable:
        _fileio.write_file_atomic(hpath, json.dumps(doc).encode())
        return
    with open(hpath + ".tmp", "w", opener=_fileio.private) as f:
        json.dump(doc, f)
    _fileio.rename(hpath + ".tmp", hpath)
