"""Crash and corruption sweeps for your own tables and hooks.

rehydrate's harness runs these against its own table kinds
(docs/reliability.md). Run them against your ``StateType`` classes, your
warmup hooks and your write patterns too:

    from rehydrate.testing import crash_sweep, corruption_sweep

    def work(store):                  # what your service does
        store.write("top", "add", "a", 5)
        store.checkpoint()

    def check(store, crashed):        # what must hold after any crash
        assert set(store.table("top").items()) <= {("a", 5)}

    crash_sweep(prepared_dir, work, check, tables={"top": TopK})

**Crash sweep.** Work on a fresh copy of the directory with a crash at the
Nth file operation, for N = 1, 2, ... until the work finishes without
reaching N. Then reopen the copy and call ``check``. A crash here stops
every file operation from the Nth on. The files are then what a kill -9 at
that point leaves, because every write of the store goes through one layer
(``rehydrate._fileio``), and nothing is cached above it but what a killed
process loses anyway.

**Corruption sweep.** Flip bits of the store's files in copies. Each open
must raise a typed error (``RehydrateError``), or give a store that passes
``check``.

The pytest plugin (``rehydrate.testing.plugin``, enabled by installing
rehydrate) gives the same as the ``rehydrate_sweeps`` fixture, working in
``tmp_path``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from typing import Callable, Optional

from .. import _fileio
from ..errors import RehydrateError

# What a crash stops (reads go on: a dead process reads nothing anyway).
_WRITES = ("create_exclusive", "open_append", "write_all", "fsync", "fsync_dir", "close",
           "rename", "unlink", "truncate", "makedirs", "write_file_atomic")


class SimulatedCrash(BaseException):
    """The process "died" at this file operation (a BaseException, so no
    ``except Exception`` in the code under test swallows it)."""


@contextmanager
def crash_at(n: int):
    """File operations 1..n-1 happen; the nth and every later one raises
    SimulatedCrash. Yields a dict whose "reached" says if it came to that."""
    state = {"calls": 0, "reached": False}
    real = {name: getattr(_fileio, name) for name in _WRITES}

    def make(name):
        def op(*args, **kwargs):
            state["calls"] += 1
            if state["calls"] >= n:
                state["reached"] = True
                raise SimulatedCrash(f"crash at file operation {n} ({name})")
            return real[name](*args, **kwargs)
        return op

    for name in _WRITES:
        setattr(_fileio, name, make(name))
    try:
        yield state
    finally:
        for name, fn in real.items():
            setattr(_fileio, name, fn)


def _abandon(store) -> None:
    """Let go of a store "killed" mid-work: its threads and its lock, without
    writing anything (a dead process writes nothing more)."""
    from ..store import abandon

    abandon(store)


def crash_sweep(directory: str, work: Callable, check: Callable, *,
                max_points: Optional[int] = None, **open_kwargs) -> dict:
    """Run ``work(store)`` on copies of ``directory`` with a crash at each
    file operation in turn, then ``check(reopened_store, crashed_at)``
    (``crashed_at`` None for the run that finished). ``open_kwargs`` go to
    every ``Store.open``. Returns {"points", "crashes"}."""
    from ..store import Store

    scratch = tempfile.mkdtemp(prefix="rehydrate-sweep-")
    try:
        n, crashes = 1, 0
        while max_points is None or n <= max_points:
            path = os.path.join(scratch, f"run{n}")
            shutil.copytree(directory, path)
            store = Store.open(path, **open_kwargs)
            with crash_at(n) as state:
                try:
                    work(store)
                except (SimulatedCrash, RehydrateError):
                    if not state["reached"]:
                        raise
            if state["reached"]:
                _abandon(store)
                crashes += 1
            else:
                store.close()
            with Store.open(path, **open_kwargs) as again:
                check(again, n if state["reached"] else None)
            shutil.rmtree(path)
            if not state["reached"]:
                break
            n += 1
        return {"points": n, "crashes": crashes}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def corruption_sweep(directory: str, check: Callable, *, flips: int = 200, seed: int = 0,
                     **open_kwargs) -> dict:
    """Flip ``flips`` random bits (seeded) across the store's files, each in
    a fresh copy, then open it: a typed error is "detected"; otherwise
    ``check(store)`` must pass. Returns {"flips", "detected", "opened"}."""
    from ..store import Store

    files = sorted(os.path.relpath(os.path.join(root, f), directory)
                   for root, _dirs, names in os.walk(directory) for f in names
                   if f not in ("LOCK", "HINTS", "HISTORY", "migration-runs.json"))
    rng = random.Random(seed)
    scratch = tempfile.mkdtemp(prefix="rehydrate-sweep-")
    detected = opened = 0
    try:
        for i in range(flips):
            path = os.path.join(scratch, f"flip{i}")
            shutil.copytree(directory, path)
            victim = os.path.join(path, rng.choice(files))
            size = os.path.getsize(victim)
            if size:
                with open(victim, "r+b") as f:
                    at = rng.randrange(size)
                    f.seek(at)
                    byte = f.read(1)[0] ^ (1 << rng.randrange(8))
                    f.seek(at)
                    f.write(bytes((byte,)))
            try:
                store = Store.open(path, **open_kwargs)
            except RehydrateError:
                detected += 1
            else:
                with store:
                    check(store)
                opened += 1
            shutil.rmtree(path)
        return {"flips": flips, "detected": detected, "opened": opened}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
