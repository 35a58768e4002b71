"""A model of archiving and point-in-time restore (docs/archive.md).

Random writes, batches, checkpoints, archive waits and reopens against a
store archiving to a ``file://`` archive; after each step that makes the
archive hold something, a restore to a random LSN at or below what it
holds must open at the last frame end at or below that LSN, with exactly
the model's state as of that LSN. The frame ends are the LSNs each write
call ended at (with ``sync="always"`` every call is a frame of its own).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, \
    run_state_machine_as_test

import rehydrate as rh

KEYS = st.sampled_from(["a", "b", "c", "d", 1, 2, b"x"])
VALUES = st.integers(-5, 5) | st.text(max_size=3)


class ArchiveMachine(RuleBasedStateMachine):
    """The model: the state after each LSN (a list of dict snapshots)."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="rh-archive-model-")
        self.uri = "file://" + os.path.join(self.tmp, "archive")
        self.path = os.path.join(self.tmp, "state")
        self.history: list[dict] = [{}]  # history[lsn] = state after lsn
        self.frame_ends = [0]
        self.restores = 0
        self.store: rh.Store | None = None

    def _open(self) -> None:
        self.store = rh.Store.open(self.path, sync="always", segment_bytes=4096,
                                   archive=self.uri, archive_every_s=60.0, keep_snapshots=1)

    @initialize()
    def start(self) -> None:
        self._open()

    def _applied(self, changes: list[tuple]) -> None:
        state = dict(self.history[-1])
        for op, key, value in changes:
            if op == "put":
                state[key] = value
            else:
                state.pop(key, None)
            self.history.append(dict(state))
        self.frame_ends.append(len(self.history) - 1)

    @rule(key=KEYS, value=VALUES)
    def put(self, key, value) -> None:
        self.store.put("t", key, value)
        self._applied([("put", key, value)])

    @rule(key=KEYS)
    def delete(self, key) -> None:
        self.store.delete("t", key)
        self._applied([("delete", key, None)])

    @rule(items=st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=5))
    def batch(self, items) -> None:
        with self.store.batch() as b:
            for key, value in items:
                b.put("t", key, value)
        self._applied([("put", k, v) for k, v in items])

    @rule()
    def checkpoint(self) -> None:
        self.store.checkpoint()

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self._open()

    @rule(data=st.data())
    def restore_somewhere(self, data) -> None:
        assert self.store.wait_for_archive(timeout=30)
        held = self.store.archived_lsn
        assert held == self.store.lsn
        target = data.draw(st.integers(0, held), label="target")
        dest = os.path.join(self.tmp, f"restored-{self.restores}")
        self.restores += 1
        try:
            result = rh.restore(self.uri, dest, to_lsn=target)
        except rh.ArchiveError as e:
            # Only when the archive can no longer start that far back:
            # retention keeps one snapshot and the log after it.
            assert e.reason == "no_base", e
            return
        expected_lsn = max(end for end in self.frame_ends if end <= target)
        assert result["lsn"] == expected_lsn, (result, target)
        restored = rh.Store.open(dest)
        try:
            assert restored.lsn == expected_lsn
            got = dict(restored.table("t").items()) if "t" in restored.tables() else {}
            assert got == self.history[expected_lsn]
        finally:
            restored.close()
            shutil.rmtree(dest)

    @invariant()
    def archive_never_ahead(self) -> None:
        if self.store is not None and self.store.archived_lsn is not None:
            assert self.store.archived_lsn <= self.store.lsn

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def test_archive_restore_model() -> None:
    run_state_machine_as_test(
        ArchiveMachine,
        settings=settings(max_examples=25, stateful_step_count=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]))
