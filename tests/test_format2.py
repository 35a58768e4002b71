"""Format 2: frame headers that cannot lie, and a recorded clean end.

A cleanly closed log can have no torn tail (no crash made it), so every
bit flipped in the header of its last frame, or of its only frame, and every
cut from its end, must give a typed error or the whole state, never fewer
records without an error (docs/FORMAT.md, docs/recovery.md). A crash's torn
write is still cut under tolerate-tail, and format-1 stores keep opening.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys

import pytest

import rehydrate as rh
from rehydrate import _format as F
from rehydrate import manifest
from rehydrate._backend import core as current_core
from rehydrate.testing import apply_to_store, check_recovery, record_count
from rehydrate.wal import read_segment_version

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "format1")
FIXTURE_TABLES = {
    "prefs": rh.DictTable,
    "stats": rh.NumericTable({"hits": "int64", "score": "float64"}, rows=8),
}


def _ops(compressed: bool) -> list:
    ops = [("put", "users", f"u{i}", {"n": i}) for i in range(5)]
    ops.append(("incr", "hits", "/a", 3))
    if compressed:
        # >= 512 raw bytes that LZ4 shrinks: the frame is stored compressed,
        # so stored_len != raw_len and only the header's check guards it.
        ops.append(("batch", [("put", "users", f"bulk{i}", {"pad": "abc" * 12, "i": i})
                              for i in range(40)]))
    else:
        ops.append(("put", "users", "last", [1, 2, 3]))
    return ops


def _frames(seg_path: str) -> list:
    """(offset, header) of each frame of a segment, by its headers."""
    core = current_core()
    buf = open(seg_path, "rb").read()
    version = read_segment_version(seg_path)
    hb = F.frame_header_bytes(version)
    out, off = [], F.SEGMENT_HEADER_BYTES
    while off < len(buf):
        h = core.parse_frame_header(buf, off, version)
        out.append((off, h))
        off += hb + h.stored_len
    assert off == len(buf)
    return out


def _newest_segment(path: str) -> str:
    waldir = os.path.join(path, "wal")
    return os.path.join(waldir, sorted(os.listdir(waldir))[-1])


def _written(ops) -> int:
    return sum(record_count(op) for op in ops)


# (sync mode, frames): "only" makes the whole log one frame (a buffered
# store writes everything at close), "last" makes one frame per op.
SHAPES = [("none", "only"), ("interval", "only"), ("always", "last")]


@pytest.fixture(params=[f"{s}-{w}-{c}" for s, w in SHAPES for c in ("lz4", "raw")])
def closed_store(request, core, tmp_path):
    sync, which, codec = request.param.split("-")
    ops = _ops(codec == "lz4")
    path = str(tmp_path / "pristine")
    with rh.Store.open(path, sync=sync, sync_interval_ms=60_000) as s:
        for op in ops:
            apply_to_store(s, op)
    frames = _frames(_newest_segment(path))
    if which == "only":
        assert len(frames) == 1, "the shape needs the whole log in one frame"
    else:
        assert len(frames) == len(ops)
    off, h = frames[-1]
    assert (h.codec == F.CODEC_LZ4) == (codec == "lz4")
    return path, ops, off


def _judge(path: str, ops: list, mode: str = "tolerate-tail") -> dict:
    # Everything written was acknowledged: the store closed cleanly.
    return check_recovery(lambda: rh.Store.open(path, recovery=mode), ops, _written(ops),
                          allow_error=True)


def _fresh_copy(pristine: str, dst: str) -> str:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(pristine, dst)
    return dst


def test_every_header_bit_of_the_last_frame_is_caught(closed_store, tmp_path):
    pristine, ops, frame_off = closed_store
    seg_name = os.path.basename(_newest_segment(pristine))
    detected = 0
    for bit in range(F.FRAME_HEADER_BYTES * 8):
        work = _fresh_copy(pristine, str(tmp_path / "work"))
        seg = os.path.join(work, "wal", seg_name)
        data = bytearray(open(seg, "rb").read())
        data[frame_off + bit // 8] ^= 1 << (bit % 8)
        with open(seg, "wb") as f:
            f.write(data)
        verdict = _judge(work, ops)  # the oracle: whole state or a typed error
        detected += verdict["outcome"] == "error"
        assert rh.verify(work).ok is (verdict["outcome"] == "recovered"), bit
    # Every header bit is under a checksum: no flip can leave the state whole.
    assert detected == F.FRAME_HEADER_BYTES * 8


def test_header_flips_are_damage_even_without_a_clean_end(closed_store, tmp_path):
    """The header's own checksum alone (as after a crash, with no clean end
    recorded) tells a flipped length from a torn write."""
    pristine, ops, frame_off = closed_store
    seg_name = os.path.basename(_newest_segment(pristine))
    # stored_len and raw_len: the fields that say where the next frame is.
    for byte in range(20, 28):
        for bit in range(8):
            work = _fresh_copy(pristine, str(tmp_path / "work"))
            man = manifest.read(work)
            del man["clean_end"]
            manifest.write(work, man)
            seg = os.path.join(work, "wal", seg_name)
            data = bytearray(open(seg, "rb").read())
            data[frame_off + byte] ^= 1 << bit
            with open(seg, "wb") as f:
                f.write(data)
            report = rh.verify(work)
            assert not report.ok
            first = report.problems[0]
            assert (first.kind, first.offset) == ("bad_header", frame_off), (byte, bit, first)
            assert "torn_tail" not in [p.kind for p in report.problems]
            assert _judge(work, ops)["outcome"] == "error"


def test_every_cut_from_the_end_of_a_clean_log_is_caught(closed_store, tmp_path):
    pristine, ops, frame_off = closed_store
    seg_name = os.path.basename(_newest_segment(pristine))
    for cut in range(1, 65):
        work = _fresh_copy(pristine, str(tmp_path / "work"))
        seg = os.path.join(work, "wal", seg_name)
        size = os.path.getsize(seg)
        if cut > size - F.SEGMENT_HEADER_BYTES:
            break
        os.truncate(seg, size - cut)
        verdict = _judge(work, ops)
        assert verdict["outcome"] == "error", cut
        report = rh.verify(work)
        assert not report.ok and not any(p.kind == "torn_tail" for p in report.problems), cut


@pytest.mark.parametrize("damage", ["whole_last_frame", "newest_segment", "zeros_appended",
                                    "frame_appended"])
def test_a_clean_log_that_ends_elsewhere_is_damage(core, tmp_path, damage):
    ops = [("put", "t", f"k{i}", "v" * 60) for i in range(80)]
    path = str(tmp_path / "s")
    with rh.Store.open(path, sync="always", segment_bytes=4096) as s:
        for op in ops:
            apply_to_store(s, op)
    assert len(os.listdir(os.path.join(path, "wal"))) >= 2
    seg = _newest_segment(path)
    frames = _frames(seg)
    if damage == "whole_last_frame":
        os.truncate(seg, frames[-1][0])  # a cut on a frame boundary
    elif damage == "newest_segment":
        os.unlink(seg)
    elif damage == "zeros_appended":
        with open(seg, "ab") as f:
            f.write(bytes(4096))
    else:
        # A whole, checksummed frame past the recorded end: the log is not
        # the one that was closed.
        frame = core.encode_frame(len(ops) + 1, 1, [(0, F.KIND_KV, b"t")],
                                  bytes((F.OP_NOOP, 0, 0, 0)))
        with open(seg, "ab") as f:
            f.write(frame)
    report = rh.verify(path)
    assert not report.ok
    assert "clean_end_mismatch" in [p.kind for p in report.problems]
    for mode in ("strict", "tolerate-tail"):
        with pytest.raises(rh.CorruptionError) as e:
            rh.Store.open(path, recovery=mode)
        assert e.value.reason in ("clean_end_mismatch", "bad_magic", "bad_header")
    # point-in-time takes what is there, and says what is missing.
    if damage in ("whole_last_frame", "newest_segment"):
        with rh.Store.open(path, recovery="point-in-time") as s:
            lost = [p for p in s.recovery_report.problems if p.kind == "clean_end_mismatch"]
            assert lost and lost[0].lsn_end == len(ops) and lost[0].lsn == s.lsn + 1


def test_the_clean_end_goes_before_the_log_grows(core, tmp_path):
    path = str(tmp_path / "s")
    with rh.Store.open(path, sync="always") as s:
        s.put("t", "a", 1)
    recorded = manifest.read(path)["clean_end"]
    assert recorded == {"lsn": 1, "segment": os.path.basename(_newest_segment(path)),
                        "offset": os.path.getsize(_newest_segment(path))}
    s = rh.Store.open(path)
    try:
        # Open, before any write: a crash from here is a crash.
        assert "clean_end" not in manifest.read(path)
        assert manifest.read(path)["format"] == F.FORMAT_VERSION
        s.put("t", "b", 2)
    finally:
        s.close()
    assert manifest.read(path)["clean_end"]["lsn"] == 2


CRASH_WRITER = r"""
import os, sys
import rehydrate as rh
from rehydrate._backend import core as current_core
from rehydrate.testing import apply_to_store
path = sys.argv[1]
s = rh.Store.open(path, sync="always")
ops = [("put", "t", f"k{i}", {"v": "w" * 40}) for i in range(8)]
ops.append(("batch", [("put", "t", f"b{i}", {"pad": "xyz" * 12}) for i in range(40)]))
for op in ops:
    apply_to_store(s, op)
sys.stdout.write("acked\n")
sys.stdout.flush()
os.kill(os.getpid(), 9)  # no close: what a crash leaves
"""


def test_a_torn_write_after_a_crash_is_still_cut(core, core_env, tmp_path):
    """Without a clean end, a frame cut short by a crash (its header whole
    and checked) is a torn tail: tolerate-tail drops it and reports it."""
    path = str(tmp_path / "s")
    proc = subprocess.run([sys.executable, "-c", CRASH_WRITER, path], env=core_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL and proc.stdout == "acked\n", proc.stderr
    assert "clean_end" not in manifest.read(path)
    ops = [("put", "t", f"k{i}", {"v": "w" * 40}) for i in range(8)]
    last = ("batch", [("put", "t", f"b{i}", {"pad": "xyz" * 12}) for i in range(40)])
    seg = _newest_segment(path)
    off, h = _frames(seg)[-1]
    pristine = str(tmp_path / "pristine")
    shutil.copytree(path, pristine)
    # Cut inside the last frame's payload: as if the crash came mid-write,
    # before that frame was acknowledged.
    for keep in (F.FRAME_HEADER_BYTES, F.FRAME_HEADER_BYTES + 1,
                 F.FRAME_HEADER_BYTES + h.stored_len - 1):
        work = _fresh_copy(pristine, str(tmp_path / "work"))
        os.truncate(os.path.join(work, "wal", os.path.basename(seg)), off + keep)
        verdict = check_recovery(lambda: rh.Store.open(work), ops + [last], _written(ops))
        assert verdict == {"outcome": "recovered", "lsn": _written(ops)}
        with rh.Store.open(work) as s:  # (cut already; the reopen is clean)
            assert s.recovery_report.ok
        strict = _fresh_copy(pristine, str(tmp_path / "strict"))
        os.truncate(os.path.join(strict, "wal", os.path.basename(seg)), off + keep)
        with pytest.raises(rh.TornTailError):
            rh.Store.open(strict, recovery="strict")


@pytest.mark.parametrize("forged", [
    "not a dict", {"lsn": -1, "segment": None, "offset": None},
    {"lsn": "2", "segment": None, "offset": None}, {"lsn": 2, "segment": 7, "offset": 150},
    {"lsn": 2, "segment": "00000000000000000001.wal", "offset": "150"}, {"segment": "x"},
], ids=["not-a-dict", "negative-lsn", "str-lsn", "int-segment", "str-offset", "no-lsn"])
def test_a_forged_clean_end_is_a_bad_manifest(core, tmp_path, forged):
    """The record is read from disk like everything else: untrusted."""
    path = str(tmp_path / "s")
    with rh.Store.open(path) as s:
        s.put("t", "a", 1)
    man = manifest.read(path)
    man["clean_end"] = forged
    manifest.write(path, man)
    for read in (lambda: rh.Store.open(path), lambda: rh.verify(path)):
        with pytest.raises(rh.CorruptionError) as e:
            read()
        assert e.value.reason == "bad_manifest" and "clean_end" in str(e.value)
    cli = subprocess.run([sys.executable, "-m", "rehydrate", "verify", path],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode in (1, 2) and "Traceback" not in cli.stderr + cli.stdout


@pytest.mark.parametrize("name", ["log-only", "with-snapshot"])
def test_format1_stores_open_verify_and_go_on(core, tmp_path, name):
    """Stores written by format 1 read as before; new writes go into a
    format-2 segment, and the old segments are left as they are."""
    src = os.path.join(FIXTURES, name)
    with open(src + ".expected.json") as f:
        expected = json.load(f)
    path = str(tmp_path / name)
    shutil.copytree(src, path)
    old_segments = sorted(os.listdir(os.path.join(path, "wal")))
    assert {read_segment_version(os.path.join(path, "wal", n)) for n in old_segments} == {1}
    assert manifest.read(path)["format"] == 1
    report = rh.verify(path)
    assert report.ok and report.last_lsn == expected["lsn"], report.problems
    deep = rh.verify(path, deep=True)
    assert deep.ok and deep.digest == expected["digest"]
    with rh.Store.open(path, tables=FIXTURE_TABLES, recovery="strict") as s:
        assert f"{s.digest():016x}" == expected["digest"]
        assert s.lsn == expected["lsn"] and s.offsets == expected["offsets"]
        assert sorted([repr(k), repr(v)] for k, v in s.table("users").items()) == \
            expected["content"]["users"]
        s.put("users", "after", 1)
    segments = sorted(os.listdir(os.path.join(path, "wal")))
    assert segments[:len(old_segments)] == old_segments
    assert read_segment_version(os.path.join(path, "wal", segments[-1])) == F.FORMAT_VERSION
    assert manifest.read(path)["format"] == F.FORMAT_VERSION
    with rh.Store.open(path, tables=FIXTURE_TABLES, recovery="strict") as s:
        assert s.lsn == expected["lsn"] + 1 and s.table("users")["after"] == 1
    assert rh.verify(path).ok


def test_a_format1_torn_tail_is_still_a_torn_tail(core, tmp_path):
    """A format-1 log has no clean end recorded (that format had none): its
    tail is judged by the rules it was written under."""
    path = str(tmp_path / "s")
    shutil.copytree(os.path.join(FIXTURES, "log-only"), path)
    seg = _newest_segment(path)
    os.truncate(seg, os.path.getsize(seg) - 3)
    report = rh.verify(path)
    assert [p.kind for p in report.problems] == ["torn_tail"]


@pytest.mark.parametrize("version", [1, 2])
def test_frame_bytes_are_the_twins(core, version):
    """Both cores write and read each format's frames byte for byte alike."""
    from rehydrate._core import frames as native
    from rehydrate._pure import frames as pure

    decls = [(0, F.KIND_KV, b"users")]
    records = bytes((F.OP_PUT, 0, 2, 0x02, 0x61, 1, 0x01)) * 200
    for offsets in (None, {"src": 5}):
        a = native.encode_frame(1, 200, decls, records, offsets, version=version)
        b = pure.encode_frame(1, 200, decls, records, offsets, version=version)
        assert a == b
        assert a[:4] == struct.pack("<I", F.frame_magic(version))
        ha = native.parse_frame_header(a, 0, version).as_dict()
        assert ha == pure.parse_frame_header(a, 0, version).as_dict()
        assert ha["header_crc_ok"] and len(a) == F.frame_header_bytes(version) + ha["stored_len"]
