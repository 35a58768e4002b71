"""The crash-loop guard (docs/warmup.md, "Crash-loop safe mode"): each
failed warmup is recorded in HISTORY with the step that failed; once one
step has failed ``max_failed_opens`` times with no full open between, the
next open skips it and opens in safe mode (degraded).

A step is a migration (by id and code hash) or a ``populate`` / ``prime``
hook (by qualified name and code hash). Changing its code makes it another
step, which runs again. A full open (nothing skipped) clears the record;
so does ``clear_failures(path)`` (``rehydrate status DIR
--clear-failures``).

The record is untrusted when read (history.py): a damaged HISTORY, or one
of a newer format, is ignored with a WARNING on the ``rehydrate.warmup``
logger, and the open runs in full.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import history as _history
from .errors import ConfigError, NotAStoreError, StorageIOError

log = logging.getLogger("rehydrate.warmup")

#: The default of ``Store.open(max_failed_opens=)``.
DEFAULT_MAX_FAILED_OPENS = 3
#: Failures kept in HISTORY (the oldest go first).
FAILURES_KEEP = 50
_KINDS = ("migration", "hook")
_FIELDS = ("kind", "phase", "name", "code_hash", "reason")


@dataclass(frozen=True)
class Step:
    """What failed, and what safe mode skips: a ``migration`` (``name`` is
    its id; phase ``migrate``) or a ``hook`` (``name`` its qualified name;
    phase ``populate`` or ``prime``), with its code hash."""

    kind: str
    phase: str
    name: str
    code_hash: str

    def label(self) -> str:
        short = self.code_hash.split(":")[-1][:12]
        return f"{self.kind} {self.name} of phase {self.phase} (code {short})"

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "phase": self.phase, "name": self.name,
                "code_hash": self.code_hash}


def hook_step(phase: str, fn: Callable[..., Any]) -> Step:
    """The step a hook is: its qualified name and the hash of its code, the
    same in every process (a ``functools.partial`` is its function's; a
    callable object its class's)."""
    from .migrations import code_hash

    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = target if isinstance(target, type) else type(target)
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) \
        or type(target).__name__
    return Step("hook", phase, name, code_hash(target))


@dataclass(frozen=True)
class Decision:
    """What the next open does: ``skip`` (the steps safe mode leaves out;
    empty: a full open), ``failed_opens`` (failures recorded since the last
    full open), ``counts`` (per step), ``failures`` (the record, oldest
    first), ``reason`` (a line saying why it is degraded, or None),
    ``problem`` (why HISTORY was ignored, or None)."""

    skip: tuple[Step, ...] = ()
    failed_opens: int = 0
    counts: dict[Step, int] = field(default_factory=dict)
    failures: tuple[dict[str, Any], ...] = ()
    reason: Optional[str] = None
    problem: Optional[str] = None

    @property
    def safe_mode(self) -> bool:
        return bool(self.skip)

    def as_dict(self, max_failed_opens: int) -> dict[str, Any]:
        return {"failed_opens": self.failed_opens, "max_failed_opens": max_failed_opens,
                "safe_mode": self.safe_mode, "reason": self.reason,
                "skip": [s.as_dict() for s in self.skip],
                "counts": [dict(s.as_dict(), count=n) for s, n in self.counts.items()],
                "failures": list(self.failures), "history_problem": self.problem}


def _valid(entry: object) -> bool:
    return (isinstance(entry, dict) and all(type(entry.get(k)) is str for k in _FIELDS)
            and entry["kind"] in _KINDS)


def _step_of(entry: dict[str, Any]) -> Step:
    return Step(entry["kind"], entry["phase"], entry["name"], entry["code_hash"])


def check_max_failed_opens(n: object) -> int:
    if type(n) is not int or n < 0:
        raise ConfigError(f"max_failed_opens must be an int >= 0 (0: no guard), not {n!r}")
    return n


def read_failures(path: str, warn: bool = True) -> tuple[list[dict[str, Any]], Optional[str]]:
    """(the failures HISTORY records, oldest first; why it was ignored or
    None). ``warn``: log a WARNING when it was ignored."""
    found = _history.read(path)
    if found.problem is not None:
        if warn:
            log.warning("%s: HISTORY ignored (%s): no failed opens counted", path, found.problem)
        return [], found.problem
    return [f for f in found.failures if _valid(f)], None


def decide(path: str, max_failed_opens: int, warn: bool = True) -> Decision:
    """What the next open of ``path`` does: the steps that failed
    ``max_failed_opens`` times (or more) since the last full open are
    skipped (none when ``max_failed_opens`` is 0)."""
    failures, problem = read_failures(path, warn)
    counts: dict[Step, int] = {}
    for f in failures:
        step = _step_of(f)
        counts[step] = counts.get(step, 0) + 1
    skip: tuple[Step, ...] = ()
    reason = None
    if max_failed_opens > 0:
        skip = tuple(s for s, n in counts.items() if n >= max_failed_opens)
    if skip:
        last = {_step_of(f): f for f in failures}
        reason = "; ".join(f"{s.label()} failed {counts[s]} opens in a row "
                           f"({last[s]['reason']}: {last[s].get('message', '')[:200]})"
                           for s in skip)
    return Decision(skip, len(failures), counts, tuple(failures), reason, problem)


def record_failure(path: str, step: Step, reason: str, message: str) -> int:
    """Record, durably, that an open failed at ``step``; the number of
    failures of that step now recorded (0 when HISTORY could not be written,
    or is a newer version's: a warning is logged and the open's own error
    is what the caller raises)."""
    found = _history.read(path)
    if found.newer:
        log.warning("%s: HISTORY is of a newer format (%s): this failed open is not "
                    "recorded", path, found.problem)
        return 0
    failures = [f for f in found.failures if _valid(f)] if found.problem is None else []
    failures = (failures + [dict(step.as_dict(), reason=reason, message=message[:1000],
                                 at=time.time())])[-FAILURES_KEEP:]
    try:
        _history.write(path, found.opens if found.problem is None else [], failures,
                       durable=True)
    except OSError as e:
        log.warning("%s: the failed open could not be recorded in HISTORY: %s", path, e)
        return 0
    return sum(1 for f in failures if _step_of(f) == step)


def clear_failures(path: str) -> int:
    """Forget the failed opens recorded for the store at ``path`` (the next
    open runs every step again); how many were cleared. NotAStoreError when
    ``path`` is not a directory. A HISTORY that is damaged or of a newer
    format is left as it is (0)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise NotAStoreError(f"no store directory at {path}", path=path)
    found = _history.read(path)
    if found.problem is not None:
        return 0
    if not found.failures:
        return 0
    failures = [f for f in found.failures if _valid(f)]
    try:
        _history.write(path, found.opens, [], durable=True)
    except OSError as e:
        raise StorageIOError.wrap(e, path) from e
    return len(failures)
