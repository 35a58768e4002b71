"""Replay streams segments in chunks; chunk boundaries must never show.

Frames are cut by chunk ends all the time (a frame waits for the next chunk),
and a frame can be larger than a chunk. Whatever the chunk size, the state,
the report and the problems found must be the ones a whole-file read gives.
"""

import os

import pytest

from rehydrate import Store, recovery, verify

from helpers import corrupt as C


def _build(path):
    want = {}
    with Store.open(path, sync="always", segment_bytes=1 << 20) as s:
        for i in range(40):
            s.put("t", i, b"x" * (i % 7) * 10)
            want[i] = b"x" * (i % 7) * 10
        with s.batch() as b:  # one frame far larger than a small chunk
            for i in range(40, 400):
                b.put("t", i, {"n": i, "pad": "p" * 30})
                want[i] = {"n": i, "pad": "p" * 30}
        for i in range(0, 40, 3):
            s.delete("t", i)
            del want[i]
        s.incr("c", "n", 5)
    return want


def _report(path, **kw):
    with Store.open(path, **kw) as s:
        d = s.recovery_report.as_dict()
        state = s.table("t").to_dict()
    d.pop("duration_s")
    return d, state


@pytest.mark.parametrize("chunk", [37, 512, 4099, 8 << 20])
def test_chunk_size_changes_nothing(tmp_path, monkeypatch, chunk):
    path = str(tmp_path / "s")
    want = _build(path)
    whole, state = _report(path)
    assert state == want
    monkeypatch.setattr(recovery, "STREAM_CHUNK_BYTES", chunk)
    streamed, state = _report(path)
    assert state == want
    for d in (whole, streamed):
        for seg in d["segments"]:
            seg.pop("path")
    assert streamed == whole


@pytest.mark.parametrize("chunk", [64, 1000])
@pytest.mark.parametrize("cut", [1, 17, 500])
def test_a_torn_tail_is_found_whatever_the_chunk_size(tmp_path, monkeypatch, chunk, cut):
    path = str(tmp_path / "s")
    _build(path)
    C.as_crashed(path)  # a torn tail is what a crash leaves
    wal = os.path.join(path, "wal")
    seg = os.path.join(wal, sorted(os.listdir(wal))[-1])
    size = os.path.getsize(seg)
    os.truncate(seg, size - cut)
    expected = verify(path).as_dict()
    monkeypatch.setattr(recovery, "STREAM_CHUNK_BYTES", chunk)
    got = verify(path).as_dict()
    for d in (expected, got):
        d.pop("duration_s")
    assert got == expected
    assert [p["kind"] for p in got["problems"]] == ["torn_tail"]


def test_a_bad_frame_in_a_later_chunk_is_reported_at_its_file_offset(tmp_path, monkeypatch):
    path = str(tmp_path / "s")
    _build(path)
    wal = os.path.join(path, "wal")
    seg = os.path.join(wal, sorted(os.listdir(wal))[0])
    with open(seg, "r+b") as f:
        f.seek(3000)
        b = f.read(1)
        f.seek(3000)
        f.write(bytes([b[0] ^ 0x40]))
    expected = verify(path).as_dict()
    monkeypatch.setattr(recovery, "STREAM_CHUNK_BYTES", 256)
    got = verify(path).as_dict()
    for d in (expected, got):
        d.pop("duration_s")
    assert got == expected
    assert not got["ok"]
    assert got["problems"][0]["offset"] <= 3000
