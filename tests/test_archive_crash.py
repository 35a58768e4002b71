"""Archive: kill -9 of a writer that archives (docs/reliability.md, "Archive").

A real process (helpers/archive_writer.py: sync="always", 4 KiB segments,
``archive_every_s`` 0.02 s, a checkpoint every 150 writes) writes the
deterministic crash sequence and prints each acknowledged LSN and each
``archived_lsn`` it sees; it is SIGKILLed by PID after a seeded random
number of acknowledgements. Then, each round:

- ``rehydrate.restore`` of the archive must give exactly a prefix of what
  was written, ending on a whole op, with at least the last LSN the writer
  saw archived: judged by the shared oracle
  (``rehydrate.testing.check_recovery``) with that LSN as the
  acknowledged bound, so a restore that loses an archived write fails;
- the killed directory opens (normal recovery) with every acknowledged
  write (the same oracle, against the writer's acknowledgements);
- the next round's writer reopens it with the same ``archive=`` and goes
  on: the archive continues across kills.

At the end of each directory the store is opened with ``archive=`` once
more, the archive catches up, and a restore equals the store.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import signal
import statistics
import subprocess
import sys
import time

import pytest

import rehydrate as rh
from rehydrate import Store
from rehydrate.testing import check_recovery

from helpers import crash_sequence
from helpers.archive_util import make_archive, restored, state
from helpers.tier import scale

WRITER = os.path.join(os.path.dirname(__file__), "helpers", "archive_writer.py")
LINE_TIMEOUT_S = 60.0
SEGMENT_BYTES = 4096
# (directories, kills per directory), per core
ROUNDS = {"file": (scale(3, 20), scale(4, 5)), "s3": (scale(2, 10), scale(3, 5))}


class Writer:
    """helpers/archive_writer.py, its acknowledged LSNs and the archived
    LSNs it reported."""

    def __init__(self, path, seed, uri, env):
        self.p = subprocess.Popen([sys.executable, WRITER, path, str(seed), str(SEGMENT_BYTES),
                                   uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=env, text=True, bufsize=1)
        first = self.p.stdout.readline()
        assert first.startswith("ready "), (first, self._stderr())
        self.start = int(first.split()[1])
        self.acks = [self.start]
        self.archived = [0]

    def _take(self, line):
        assert not line.startswith("failed "), f"archiving stopped for good: {line}"
        if line.startswith("archived "):
            self.archived.append(int(line.split()[1]))
        elif line.strip().isdigit():
            self.acks.append(int(line))

    def read_acks(self, n):
        """Read until ``n`` more acknowledgements (or a line saying the
        archive moved, when ``after_archived``)."""
        got = 0
        while got < n:
            line = self.p.stdout.readline()
            assert line, f"the writer ended: {self._stderr()}"
            self._take(line)
            got += not line.startswith("archived ")

    def read_until_archived_moves(self):
        seen = self.archived[-1]
        while self.archived[-1] == seen:
            line = self.p.stdout.readline()
            assert line, f"the writer ended: {self._stderr()}"
            self._take(line)

    def kill(self):
        os.kill(self.p.pid, signal.SIGKILL)
        # (Through the same file object: readline may have read ahead.)
        lines = self.p.stdout.read().split("\n")
        for line in lines[:-1]:  # (the last may be cut by the kill)
            self._take(line)
        assert self.p.wait(timeout=LINE_TIMEOUT_S) == -signal.SIGKILL
        self.p.stdout.close()
        self.p.stderr.close()

    def _stderr(self):
        try:
            return self.p.stderr.read()[-2000:] if self.p.poll() is not None else ""
        except (OSError, ValueError):
            return ""


def _ops(seed, acked):
    """The ops the writer can have sent: through ``acked``, one returned but
    not yet printed, one in flight."""
    sent = len(crash_sequence.ops_up_to(seed, acked)) + 2
    return list(itertools.islice(crash_sequence.ops(seed), sent))


@pytest.mark.reliability
@pytest.mark.timeout(scale(240, 3600))
@pytest.mark.parametrize("kind", ["file", "s3"])
def test_kills_of_an_archiving_writer_lose_nothing_archived(tmp_path, request, core_env, kind):
    rng = random.Random(20261206 + (kind == "s3"))
    dirs, kills_per_dir = ROUNDS[kind]
    env = dict(core_env)
    if kind == "s3":
        from helpers.s3_server import s3_env

        env.update(s3_env())
    counts: collections.Counter = collections.Counter()
    restore_s: list[float] = []
    beyond: list[int] = []
    for d in range(dirs):
        seed = 8000 + d + (100 if kind == "s3" else 0)
        uri, objs = make_archive(kind, tmp_path, request, prefix=f"arch{d}")
        path = str(tmp_path / f"state{d}")
        previous = 0
        for k in range(kills_per_dir):
            w = Writer(path, seed, uri, env)
            try:
                assert w.start == previous, "the writer starts from the recovered LSN"
                w.read_acks(rng.choice([1, 10, 40, 120, 300]))
                if rng.random() < 0.5:
                    # (just after an upload was published: a kill among the
                    # next uploads, the deletions and the next part)
                    w.read_until_archived_moves()
                    counts["killed right after an archived LSN moved"] += 1
            finally:
                w.kill()
            counts["kills"] += 1
            acked, archived = max(w.acks), max(w.archived)
            assert archived <= acked

            # The archive: at least what the writer saw archived, an exact prefix.
            dest = str(tmp_path / f"restored{d}-{k}")
            result = {}

            def open_restored():
                t0 = time.perf_counter()
                result.update(rh.restore(uri, dest))
                restore_s.append(time.perf_counter() - t0)
                return Store.open(dest, recovery="strict")

            # (Killed before its first pass wrote a manifest, the writer saw
            # nothing archived: no archive is then the one allowed error.)
            out = check_recovery(open_restored, _ops(seed, acked), archived,
                                 allow_error=archived == 0)
            if out["outcome"] == "error":
                assert out["reason"] == "no_archive" and not objs.exists("MANIFEST"), out
                counts["killed before the archive's first manifest"] += 1
            else:
                assert result["lsn"] == out["lsn"] >= archived
                beyond.append(out["lsn"] - archived)
                counts["restores"] += 1
                counts["restored with a snapshot"] += result["snapshot_lsn"] > 0

            # The killed directory: every acknowledged write.
            opened = []

            def open_local():
                opened.append(Store.open(path))
                return opened[-1]

            local = check_recovery(open_local, _ops(seed, acked), acked)
            assert all(p.kind == "torn_tail" for p in opened[0].recovery_report.problems)
            counts["torn tails cut"] += bool(opened[0].recovery_report.problems)
            assert local["lsn"] >= result.get("lsn", 0), "the archive went past the local log"
            previous = local["lsn"]

        # Reopened with the archive: it continues, and catches up.
        with Store.open(path, archive=uri, archive_every_s=0.02) as s:
            assert s.wait_for_archive(timeout=LINE_TIMEOUT_S), s.archive_status
            assert s.archived_lsn == s.lsn == previous
            want = state(s)
        assert objs.manifest()["archived_lsn"] == previous
        final, got = restored(uri, tmp_path / f"final{d}")
        assert final["lsn"] == previous and got == want
        counts["reopened and caught up"] += 1
    print(f"\nArchive kills ({kind}): {dict(counts)}; restored LSN beyond the last "
          f"reported archived LSN: median {statistics.median(beyond):g}, max {max(beyond)}; "
          f"restore time median {statistics.median(restore_s) * 1000:.0f} ms, "
          f"max {max(restore_s) * 1000:.0f} ms")
    assert counts["kills"] == dirs * kills_per_dir
