"""Source offsets: upstream positions stored atomically with the state.

``store.batch(offsets=...)`` logs offsets in the same frame as the batch's
records; ``store.offsets`` returns them after a restart; ``store.consume``
skips what the state already includes, so at-least-once input gives
exactly-once state.
"""

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rehydrate import ConfigError, Store, _backend, verify
from rehydrate import _format as F
from rehydrate._offsets import encode_offsets, split_offsets


def test_offsets_are_stored_with_the_batch_and_come_back_after_reopen(store_dir):
    with Store.open(store_dir, sync="always") as s:
        with s.batch(offsets={"orders/3": 1200, "users/0": 7}) as b:
            b.put("orders", 1, {"qty": 2})
        assert s.offsets == {"orders/3": 1200, "users/0": 7}
        with s.batch(offsets={"orders/3": 1201}) as b:
            b.put("orders", 2, {"qty": 1})
    with Store.open(store_dir) as s:
        assert s.offsets == {"orders/3": 1201, "users/0": 7}
        assert s.table("orders").to_dict() == {1: {"qty": 2}, 2: {"qty": 1}}


def test_consume_skips_what_the_state_already_includes(store_dir):
    with Store.open(store_dir) as s:
        b = s.consume("q", 5)
        with b:
            b.incr("t", "n", 1)
        assert b.lsn == 1 and not b.skipped
        assert s.consume("q", 5) is None and s.consume("q", 3) is None
        b = s.consume("q", 6)
        with b:
            b.incr("t", "n", 1)
    with Store.open(store_dir) as s:
        assert s.consume("q", 6) is None
        assert s.table("t")["n"] == 2 and s.offsets == {"q": 6}


def test_a_consume_batch_that_lost_the_race_is_skipped_whole(store_dir):
    with Store.open(store_dir) as s:
        first, second = s.consume("q", 1), s.consume("q", 1)
        with first:
            first.put("t", "a", 1)
        with second:
            second.put("t", "b", 2)
        assert second.skipped and second.lsn is None
        assert s.table("t").to_dict() == {"a": 1} and s.lsn == 1


def test_a_batch_of_only_offsets_takes_one_lsn_and_is_durable(store_dir):
    with Store.open(store_dir, sync="always") as s:
        s.put("t", 1, 1)
        with s.batch(offsets={"q": 9}) as b:
            pass
        assert b.lsn == 2 and s.durable_lsn == 2 and s.tables() == ["t"]
    with Store.open(store_dir) as s:
        assert s.offsets == {"q": 9} and s.lsn == 2 and s.tables() == ["t"]
    assert verify(store_dir).ok


@pytest.mark.parametrize("bad", [
    [("q", 1)], {1: 5}, {"": 5}, {"x" * 1025: 5}, {"q": "5"}, {"q": 1.0}, {"q": True},
    {"q": 1 << 63}, {"\ud800": 1},
])
def test_bad_offsets_are_refused_before_anything_is_written(store_dir, bad):
    with Store.open(store_dir) as s:
        with pytest.raises(ConfigError):
            s.batch(offsets=bad)
        assert s.lsn == 0


def test_consume_refuses_a_bad_source_or_offset(store_dir):
    with Store.open(store_dir) as s:
        with pytest.raises(ConfigError):
            s.consume("", 1)
        with pytest.raises(ConfigError):
            s.consume("q", "1")


def test_dump_shows_offsets_after_their_records(store_dir, core_env):
    with Store.open(store_dir, sync="always") as s:  # one frame per batch
        with s.batch(offsets={"q": 3}) as b:
            b.put("t", "k", b"v")
        with s.batch(offsets={"r": -1}):
            pass
    out = subprocess.run([sys.executable, "-m", "rehydrate", "dump", store_dir],
                         env=core_env, capture_output=True, text=True, check=True)
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [(d["lsn"], d["op"]) for d in lines] == [(1, "put"), (1, "offsets"), (2, "noop"),
                                                    (2, "offsets")]
    assert lines[1]["value"] == {"q": 3} and lines[3]["value"] == {"r": -1}


# ------------------------------------------------------------ exactly once
MESSAGES = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 30),
                              st.integers(-5, 5)), max_size=60)


@settings(max_examples=40, deadline=None)
@given(deliveries=MESSAGES, reopen_every=st.integers(3, 20))
def test_redelivered_messages_apply_exactly_once(tmp_path_factory, deliveries, reopen_every):
    # Each (source, offset) is one message with a fixed delta; delivery
    # repeats and reorders them. The model applies a message the first time
    # its offset is past everything seen from that source.
    path = str(tmp_path_factory.mktemp("eo") / "s")
    delta_of = {}
    model, last = {}, {}
    s = Store.open(path)
    try:
        for i, (src, off, delta) in enumerate(deliveries):
            delta = delta_of.setdefault((src, off), delta)
            if off > last.get(src, -1):
                last[src] = off
                model[src] = model.get(src, 0) + delta
            b = s.consume(src, off)
            if b is not None:
                with b:
                    b.incr("sums", src, delta)
            if i % reopen_every == reopen_every - 1:
                s.close()
                s = Store.open(path)
        assert s.offsets == last
        got = s.table("sums").to_dict() if "sums" in s.tables() else {}
        assert got == model
    finally:
        s.close()


# ------------------------------------------------------------ the bytes
def test_offsets_section_round_trips_sorted_by_name():
    raw = encode_offsets({"b": 2, "a": -1, "ü": 1 << 62})
    got, used = split_offsets(raw + b"tail")
    assert got == {"a": -1, "b": 2, "ü": 1 << 62} and used == len(raw)
    assert list(got) == ["a", "b", "ü"]


@pytest.mark.parametrize("raw", [
    b"\x00", b"\x02\x01a" + bytes(8) + b"\x01a" + bytes(8),  # count 0; duplicate name
    b"\x02\x01b" + bytes(8) + b"\x01a" + bytes(8),  # out of order
    b"\x01\x01\xff" + bytes(8),  # not UTF-8
    b"\x01\x00" + bytes(8), b"\x01\x05ab",  # empty name; runs past the end
])
def test_malformed_offsets_sections_are_refused(raw):
    with pytest.raises(ValueError):
        split_offsets(raw)


def _frame_with_offsets(core, offsets):
    t = core.KVTable()
    buf = core.LogBuffer(1)
    buf.put(t, 0, "k", 1)
    first, count, recs = buf.take()
    return core.encode_frame(first, count, [(0, F.KIND_KV, b"t")], recs, offsets)


class _Registry:
    def __init__(self, core):
        self.core = core

    def declare(self, tid, kind, name, schema=b"", version=1):
        return self.core.KVTable()


def _scan(core, frame):
    ctx = core.SegmentContext(_Registry(core))
    r = core.scan_frames(frame, 0, 1, 0, ctx, True)
    return r.as_dict(), ctx.offsets


def test_both_cores_write_and_read_offsets_frames_identically(core):
    with _backend.use("native") as n, _backend.use("pure") as p:
        offsets = {"x": 1, "orders/3": 1200}
        a, b = _frame_with_offsets(n, offsets), _frame_with_offsets(p, offsets)
        assert a == b
        assert a[29] == F.FLAG_OFFSETS
        assert _scan(n, a) == _scan(p, a)
        assert _scan(n, a)[1] == offsets


@pytest.mark.parametrize("edit", ["unknown_flag", "out_of_order", "bad_count", "short_name"])
def test_damaged_offsets_frames_are_found_alike_by_both_cores(core, edit):
    from helpers import corrupt as C  # noqa: F401  (CRC fixing below mirrors it)

    with _backend.use("pure") as p:
        frame = bytearray(_frame_with_offsets(p, {"a": 1, "b": 2}))
        body = F.FRAME_HEADER_BYTES
        if edit == "unknown_flag":
            frame[29] |= 0x80
        elif edit == "out_of_order":  # names "a","b" -> "b","a"
            ia = frame.index(b"\x01a", body)
            ib = frame.index(b"\x01b", body)
            frame[ia + 1], frame[ib + 1] = ord("b"), ord("a")
        elif edit == "bad_count":
            frame[body] = 0
        else:
            frame[body + 1] = 0x7F
        # Both checksums made right again, so the edit itself is what is found.
        frame[32:36] = p.crc32c(bytes(frame[8:32])).to_bytes(4, "little")
        frame[4:8] = p.crc32c(bytes(frame[8:])).to_bytes(4, "little")
        frame = bytes(frame)
    with _backend.use("native") as n:
        a = _scan(n, frame)
    b = _scan(p, frame)
    assert a == b
    want = F.SCAN_BAD_HEADER if edit == "unknown_flag" else F.SCAN_BAD_PAYLOAD
    assert a[0]["status"] == want and a[1] == {}
    assert "checksum" not in a[0]["detail"]


# ------------------------------------------------------------ crashes
def test_sigkilled_consumer_keeps_offsets_and_state_in_step(tmp_path, core_env):
    import random
    import signal

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "helpers"))
    from consumer import message

    script = os.path.join(os.path.dirname(__file__), "helpers", "consumer.py")
    path = str(tmp_path / "s")
    rng = random.Random(11)
    acked = -1
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, script, path], env=core_env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready = proc.stdout.readline()
        assert ready.startswith("ready "), proc.stderr.read()
        # Resumes right after the last acknowledged message, never before it.
        assert int(ready.split()[1]) >= acked + 1
        for _ in range(rng.randrange(0, 40)):
            line = proc.stdout.readline()
            if not line:
                break
            acked = int(line)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        with Store.open(path) as s:
            offsets = s.offsets
            # Every acknowledged message is in, and nothing half-applied:
            # the state is exactly the messages up to the stored offsets.
            n = 0
            while message(n)[1] <= offsets.get(message(n)[0], -1):
                n += 1
            assert n - 1 >= acked
            want = {}
            for i in range(n):
                src, off, delta = message(i)
                want[src] = want.get(src, 0) + delta
            sums = s.table("sums").to_dict() if "sums" in s.tables() else {}
            assert sums == want
            if n:
                assert s.table("last").to_dict() == {src: off for src, off in offsets.items()}


def test_inspect_shows_the_offsets(store_dir, core_env):
    with Store.open(store_dir) as s:
        with s.batch(offsets={"orders/3": 1200}) as b:
            b.put("t", 1, 1)
    out = subprocess.run([sys.executable, "-m", "rehydrate", "inspect", store_dir, "--json"],
                         env=core_env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["offsets"] == {"orders/3": 1200}
    out = subprocess.run([sys.executable, "-m", "rehydrate", "inspect", store_dir],
                         env=core_env, capture_output=True, text=True, check=True)
    assert "orders/3: 1200" in out.stdout
