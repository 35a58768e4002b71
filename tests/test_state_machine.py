"""T7 (docs/reliability.md): a Hypothesis state machine over a store's whole
life: put, delete, incr, batch, sync, checkpoint, migrate, crash, reopen,
with small segments so the log rolls. After every crash and reopen the
store is judged by the one oracle (rehydrate.testing.check_recovery) and
the model follows what was recovered.

A crash here is a process crash: what the store had handed to the OS
survives, what it still buffered does not (power loss is T2,
tests/test_power_loss.py). Acknowledged = up to the durable LSN.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test,
)

import rehydrate as rh
from rehydrate.store import abandon
from rehydrate.testing import Model, apply_to_store, check_recovery
from helpers.tier import scale

KEYS = st.integers(0, 12)
SEEN: dict = {}  # rule -> times run, over a test (that every kind of step ran)
SMALL = st.integers(-50, 50)


def _bump(rows):
    """The migrations' reshaping: every int value + 1000 (deterministic)."""
    for k, v in list(rows.items()):
        if type(v) is int:
            rows[k] = v + 1000


class StoreLife(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="rh-sm-") + "/s"
        self.sync = "interval"
        self.migrations = rh.Migrations()
        self.n_migrations = 0
        self.base = Model()     # the model of what the log held at the last (re)open
        self.ops: list = []     # ops since then, as sent
        self.store = self._open()

    def _open(self):
        return rh.Store.open(self.dir, sync=self.sync, segment_bytes=4096,
                             migrations=self.migrations, keep_snapshots=1)

    def _note(self, what: str) -> None:
        SEEN[what] = SEEN.get(what, 0) + 1

    def _send(self, op):
        self._note(op[0])
        apply_to_store(self.store, op)
        self.ops.append(op)

    # -- writes ---------------------------------------------------------------
    @rule(k=KEYS, v=SMALL)
    def put(self, k, v):
        self._send(("put", "kv", k, v))

    @rule(k=KEYS)
    def delete(self, k):
        self._send(("delete", "kv", k))

    @rule(k=KEYS, d=SMALL)
    def incr(self, k, d):
        self._send(("incr", "counters", k, d))

    @rule(items=st.lists(st.tuples(KEYS, SMALL), min_size=1, max_size=5))
    def batch(self, items):
        self._send(("batch", [("put", "kv", k, v) for k, v in items]
                    + [("incr", "counters", k, 1) for k, _ in items]))

    @rule()
    def sync_now(self):
        self.store.sync()

    @rule()
    def checkpoint(self):
        self._note("checkpoint")
        self.store.checkpoint()

    # -- life and death -------------------------------------------------------
    def _reopened(self, acked: int, crashed: bool):
        self._note("crash" if crashed else "reopen")
        verdict = check_recovery(self._open, self.ops, acked, base=self.base)
        model = self.base.copy()
        for op in self.ops:
            if model.lsn >= verdict["lsn"]:
                break
            model.apply(op)
        self.base, self.ops = model, []
        self.store = self._open()

    @rule()
    def reopen(self):
        acked = self.store.lsn  # a clean close makes everything durable
        self.store.close()
        self._reopened(acked, crashed=False)

    @rule()
    def crash(self):
        s = self.store
        acked = s.durable_lsn
        # A process crash: the flush thread dies, buffered records with it;
        # what was written to the OS stays.
        abandon(s)
        self._reopened(acked, crashed=True)

    @precondition(lambda self: self.n_migrations < 3)
    @rule()
    def migrate(self):
        self.store.close()
        acked = self.base.lsn + sum(len(op[1]) if op[0] == "batch" else 1 for op in self.ops)
        self.n_migrations += 1
        self._note("migrate")
        self.migrations.migration(f"bump-{self.n_migrations}", table="kv",
                                  to_version=self.n_migrations + 1)(_bump)
        # The open runs the migration (one LSN, its marker) after the replay.
        verdict = check_recovery(lambda: rh.Store.open(self.dir, sync=self.sync,
                                                       segment_bytes=4096, keep_snapshots=1),
                                 self.ops, acked, base=self.base)
        model = self.base.copy()
        for op in self.ops:
            model.apply(op)
        assert verdict["lsn"] == model.lsn
        model.migrate("kv", _bump)
        self.base, self.ops = model, []
        self.store = self._open()
        assert self.store.lsn == model.lsn and self.store.ledger[-1]["id"] == \
            f"bump-{self.n_migrations}"

    @invariant()
    def live_state_is_the_model(self):
        model = self.base.copy()
        for op in self.ops:
            model.apply(op)
        from rehydrate.testing import canon_state, store_state

        assert canon_state(store_state(self.store), drop_empty=True) == \
            canon_state(model.state(), drop_empty=True)
        assert self.store.lsn == model.lsn

    def teardown(self):
        import shutil

        self.store.close()
        shutil.rmtree(self.dir.rsplit("/", 1)[0], ignore_errors=True)


@pytest.mark.reliability
def test_store_life():
    # A plain test (not StoreLife.TestCase), so that it runs on both cores.
    SEEN.clear()
    run_state_machine_as_test(StoreLife, settings=settings(
        max_examples=scale(60, 600), stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
    assert {"put", "batch", "checkpoint", "crash", "reopen", "migrate"} <= set(SEEN), SEEN
