"""Random op sequences against a dict-of-dicts model, with close/reopen.

The store must agree with the model after every step, after every reopen
(with segment sizes small enough to roll segments), and replaying the same
log twice must give the same state.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rehydrate import (
    InvalidOperationError,
    Store,
    UnsupportedKeyError,
    ValueEncodingError,
)

from helpers.model import (
    INT64_MAX,
    INT64_MIN,
    Model,
    ModelInvalidOp,
    canon_state,
    store_state,
)

TABLES = st.sampled_from(["a", "b", "ümlaut"])
GOOD_KEYS = (
    st.sampled_from(["a", b"a", 1, "", b"", 0, -1, INT64_MAX, INT64_MIN, "ключ"])
    | st.text(max_size=6)
    | st.binary(max_size=6)
    | st.integers(INT64_MIN, INT64_MAX)
)
BAD_KEYS = st.sampled_from([True, False, 1.0, None, 1 << 63, INT64_MIN - 1, ("a",),
                            bytearray(b"a")])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, (1 << 64) - 1)
    | st.floats(-1e9, 1e9, allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3)
    | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=4) | st.integers(-3, 3), inner, max_size=3),
    max_leaves=6,
)
# Big values make frames LZ4-compressed (text) or large (bytes), and roll segments.
BIG_VALUES = st.integers(400, 3000).map(lambda n: "z" * n) | st.binary(min_size=300, max_size=1500)
_UNENCODABLE = [object(), {1, 2}, 1 << 64, INT64_MIN - 1, 1j, [object()], {"k": {3}}]
BAD_VALUES = st.sampled_from(_UNENCODABLE)
GOOD_DELTAS = (st.integers(-1000, 1000) | st.floats(-1e6, 1e6, allow_nan=False)
               | st.sampled_from([INT64_MAX, INT64_MIN]))
BAD_DELTAS = st.sampled_from([True, False, "1", None, 1 << 63, 1j])
SEGMENT_BYTES = st.sampled_from([4096, 4096, 4096, 8192, 65536])
SYNC = st.sampled_from(["always", "always", "always", "none", "interval"])

# One staged op: (kind, table, key, arg, expected staging error or None)
BATCH_OPS = st.one_of(
    st.tuples(st.just("put"), TABLES, GOOD_KEYS, VALUES),
    st.tuples(st.just("put"), TABLES, GOOD_KEYS, BIG_VALUES),
    st.tuples(st.just("delete"), TABLES, GOOD_KEYS),
    st.tuples(st.just("incr"), TABLES, GOOD_KEYS, GOOD_DELTAS),
    st.tuples(st.just("clear"), TABLES),
)
BAD_BATCH_OPS = st.one_of(
    st.tuples(st.just("put"), TABLES, BAD_KEYS, VALUES),
    st.tuples(st.just("put"), TABLES, GOOD_KEYS, BAD_VALUES),
    st.tuples(st.just("incr"), TABLES, GOOD_KEYS, BAD_DELTAS),
)


def _staging_error(op):
    kind = op[0]
    if kind in ("put", "delete", "incr") and not _good_key(op[2]):
        return UnsupportedKeyError
    if kind == "put" and any(op[3] is v for v in _UNENCODABLE):
        return ValueEncodingError
    if kind == "incr" and not _good_delta(op[3]):
        return InvalidOperationError
    return None


def _good_key(k):
    return type(k) in (str, bytes) or (type(k) is int and INT64_MIN <= k <= INT64_MAX)


def _good_delta(d):
    return type(d) is float or (type(d) is int and INT64_MIN <= d <= INT64_MAX)


class StoreVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="rehydrate-model-")
        self.path = os.path.join(self.tmp, "state")
        self.model = Model()
        self.store = None
        self.reopens = 0

    @initialize(segment_bytes=SEGMENT_BYTES, sync=SYNC)
    def open_new(self, segment_bytes, sync):
        self.store = Store.open(self.path, sync=sync, segment_bytes=segment_bytes)
        assert self.store.lsn == 0 and self.store.tables() == []

    # -- single writes ---------------------------------------------------
    def _expect_unchanged(self, exc_type, call):
        before_lsn = self.store.lsn
        try:
            call()
        except exc_type:
            pass
        else:
            raise AssertionError(f"expected {exc_type.__name__}")
        assert self.store.lsn == before_lsn

    @rule(table=TABLES, key=GOOD_KEYS, value=VALUES | BIG_VALUES, bad_key=BAD_KEYS,
          bad_value=BAD_VALUES, variant=st.sampled_from(["ok"] * 6 + ["bad_key", "bad_value"]))
    def put(self, table, key, value, bad_key, bad_value, variant):
        if variant == "bad_key":
            self._expect_unchanged(UnsupportedKeyError,
                                   lambda: self.store.put(table, bad_key, value))
        elif variant == "bad_value":
            self._expect_unchanged(ValueEncodingError,
                                   lambda: self.store.put(table, key, bad_value))
        else:
            lsn = self.store.put(table, key, value)
            assert lsn == self.model.put(table, key, value)

    @rule(table=TABLES, key=GOOD_KEYS, value=st.binary(min_size=1200, max_size=2500))
    def put_big(self, table, key, value):
        # Two or three of these fill a 4 KiB segment: rolls are exercised.
        assert self.store.put(table, key, value) == self.model.put(table, key, value)

    @rule(table=TABLES, key=GOOD_KEYS)
    def delete(self, table, key):
        assert self.store.delete(table, key) == self.model.delete(table, key)

    @rule(table=TABLES, key=GOOD_KEYS, delta=GOOD_DELTAS | BAD_DELTAS)
    def incr(self, table, key, delta):
        try:
            expected = self.model.incr(table, key, delta)
        except ModelInvalidOp:
            self._expect_unchanged(InvalidOperationError,
                                   lambda: self.store.incr(table, key, delta))
        else:
            assert self.store.incr(table, key, delta) == expected

    @rule(table=TABLES, data=st.data())
    def incr_existing_key(self, table, data):
        # Aim incr at keys that exist, so non-numbers and overflow are hit.
        rows = self.model.tables.get(table)
        if not rows:
            return
        key = data.draw(st.sampled_from(sorted(rows, key=repr)))
        self.incr(table, key, data.draw(GOOD_DELTAS))

    @rule(table=TABLES)
    def clear(self, table):
        assert self.store.clear(table) == self.model.clear(table)

    # -- batches ---------------------------------------------------------
    @rule(ops=st.lists(BATCH_OPS, max_size=6), bad=st.lists(BAD_BATCH_OPS, max_size=1),
          at=st.integers(0, 6))
    def batch(self, ops, bad, at):
        ops = list(ops)
        if bad:
            ops.insert(min(at, len(ops)), bad[0])
        self._run_batch(ops)

    @rule(ops=st.lists(BATCH_OPS, max_size=5), table=TABLES, key=GOOD_KEYS,
          poison=st.sampled_from(["text", [1], None, True, 1 << 63]))
    def batch_whose_incr_fails_at_commit_rolls_back(self, ops, table, key, poison):
        # The incr can only fail at commit, after the ops before it applied:
        # every one of them (clears included) must be rolled back.
        self._run_batch(list(ops) + [("put", table, key, poison), ("incr", table, key, 1)],
                        must_fail=True)

    def _run_batch(self, ops, must_fail=False):
        staged_error = next((e for e in map(_staging_error, ops) if e), None)
        expected_error = staged_error
        trial = self.model.copy()
        if expected_error is None:
            try:
                trial.apply(("batch", [op for op in ops]))
            except ModelInvalidOp:
                expected_error = InvalidOperationError
        before = self.store.lsn
        b = self.store.batch()
        try:
            with b:
                for op in ops:
                    getattr(b, op[0])(*op[1:])
        except (UnsupportedKeyError, ValueEncodingError, InvalidOperationError) as e:
            assert expected_error is not None and isinstance(e, expected_error), (e, ops)
            assert canon_state(store_state(self.store)) == canon_state(self.model.tables)
            assert b.lsn is None
            assert self.store.lsn == before
            return
        assert expected_error is None and not must_fail, ops
        if not ops:
            assert b.lsn is None and self.store.lsn == before
            return
        self.model = trial
        assert b.lsn == self.model.lsn == self.store.lsn

    # -- reopen ----------------------------------------------------------
    @precondition(lambda self: self.reopens < 4)
    @rule(segment_bytes=SEGMENT_BYTES, sync=SYNC,
          recovery=st.sampled_from(["strict", "tolerate-tail"]))
    def close_and_reopen(self, segment_bytes, sync, recovery):
        self.reopens += 1
        self.store.close()
        first = Store.open(self.path, sync=sync, segment_bytes=segment_bytes,
                           recovery=recovery)
        report = first.recovery_report
        assert report.ok and report.problems == [], report.as_dict()
        assert report.records == self.model.lsn
        state = canon_state(store_state(first))
        first.close()
        # Replaying the same log again is idempotent.
        self.store = Store.open(self.path, sync=sync, segment_bytes=segment_bytes,
                                recovery=recovery)
        assert canon_state(store_state(self.store)) == state
        assert self.store.lsn == self.model.lsn

    @invariant()
    def state_equals_model(self):
        if self.store is None:
            return
        assert self.store.lsn == self.model.lsn
        assert self.store.tables() == list(self.model.tables)
        assert canon_state(store_state(self.store)) == canon_state(self.model.tables)

    def teardown(self):
        try:
            if self.store is not None:
                self.store.close()
                # A clean close leaves a log that replays to the model.
                with Store.open(self.path, recovery="strict") as again:
                    assert again.lsn == self.model.lsn
                    assert canon_state(store_state(again)) == canon_state(self.model.tables)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def test_random_ops_with_reopens_match_the_model_exactly(core):
    run_state_machine_as_test(
        StoreVsModel,
        settings=settings(max_examples=200, stateful_step_count=50, deadline=None,
                          database=None, derandomize=False,
                          suppress_health_check=list(HealthCheck)),
    )


def test_segment_rolls_and_reopens_keep_every_record(store_dir):
    # A fixed long run that certainly rolls many 4 KiB segments (the random
    # test above may or may not), checked against the model at every reopen.
    model = Model()
    for round_ in range(4):
        with Store.open(store_dir, sync="always", segment_bytes=4096) as s:
            assert canon_state(store_state(s)) == canon_state(model.tables)
            assert s.lsn == model.lsn
            for i in range(60):
                key = (round_ * 60 + i) % 37
                assert s.put("t", key, {"r": round_, "i": i, "pad": "p" * 40}) == \
                    model.put("t", key, {"r": round_, "i": i, "pad": "p" * 40})
                assert s.incr("n", key % 5, i) == model.incr("n", key % 5, i)
    segments = os.listdir(os.path.join(store_dir, "wal"))
    assert len(segments) >= 5
    with Store.open(store_dir, recovery="strict") as s:
        assert s.lsn == model.lsn
        assert canon_state(store_state(s)) == canon_state(model.tables)
