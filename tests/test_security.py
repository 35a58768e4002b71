"""What a hostile or careless state directory can make rehydrate do.

(a) File content is never unpickled, eval'd or exec'd. (b) Names read from
the MANIFEST or a snapshot's META never leave the directory: each is
refused with a typed error even when what it points at would pass every
check. (c) Every file a store makes is 0600, every directory 0700. (d) An
LZ4 block cannot inflate past its frame header's raw_len. (e) ``verify`` on
a hostile wal/ (symlinks out, a FIFO, a directory, a 2 GiB sparse segment)
neither hangs, nor follows the link, nor reads the file into memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rehydrate import CorruptionError, Store, inspect, manifest, verify
from rehydrate import _format as F
from rehydrate import snapshot as S
from rehydrate.repair import repair
from rehydrate.testing import check_recovery
from rehydrate.wal import encode_segment_header, segment_name

from helpers import corrupt as C
from helpers import sweep

MODES = ("strict", "tolerate-tail", "point-in-time", "skip-corrupted")
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def snapshot_store(core, tmp_path_factory):
    # One snapshot, the log whole (the truncation sweep's "full-log" store).
    return sweep.cached(core, tmp_path_factory, "full-log", 62, segment_bytes=1 << 20,
                        checkpoint_after=(40,))


# ----------------------------------------------------- (a) no code from data
# Python's ways to run bytes as code or objects; ``import pickle`` too.
_UNSAFE = re.compile(r"\bpickle\.loads?\b|\bimport pickle\b|\bfrom pickle\b|\bmarshal\b"
                     r"|(?<![\w.])eval\(|(?<![\w.])exec\(")
# rehydrate.bench times a pickle.load of a file it wrote itself a moment
# before (the "pickle_load" baseline): bench data, never a store's file.
_BENCH = SRC / "rehydrate" / "bench"


def _unsafe_lines(paths) -> list:
    return [f"{p.relative_to(SRC)}:{n}: {line.strip()}" for p in paths
            for n, line in enumerate(p.read_text().splitlines(), 1) if _UNSAFE.search(line)]


def test_no_file_content_is_ever_unpickled_evaluated_or_executed():
    sources = [p for p in sorted((SRC / "rehydrate").rglob("*.py")) if _BENCH not in p.parents]
    sources += sorted(p for ext in ("py", "pyx", "pxd") for p in (SRC / "rehydrate" / "_core").rglob(f"*.{ext}"))
    assert len(sources) > 40
    assert _unsafe_lines(sources) == []
    # The one exclusion is still needed (else it should go).
    assert _unsafe_lines(sorted(_BENCH.glob("*.py")))


# ------------------------------------------------------ (b) names stay inside
# From snapshots/<LSN>/, "../../../outside" is the test's outside/ folder.
ESCAPES = ["../../../outside/{f}", "{outside}/{f}", "x/../{f}", "..", ".", "", "{f}\x00x"]


def test_manifest_snapshot_names_that_are_not_lsns_are_refused(snapshot_store, tmp_path):
    s = snapshot_store
    for bad in ["../../outside", "/etc", "00000000000000000040", 1.5, None, {"a": 1}, -1]:
        d = s.copy(tmp_path / "m")
        man = manifest.read(d)
        man.update(snapshots=[bad], log_start=2)  # readers then need a snapshot too
        manifest.write(d, man)
        for mode in MODES:
            with pytest.raises(CorruptionError) as ei:
                Store.open(d, recovery=mode)
            assert ei.value.reason == "bad_manifest", (bad, ei.value)
        for read in (lambda: verify(d, deep=True), lambda: inspect(d)):
            with pytest.raises(CorruptionError) as ei:
                read()
            assert ei.value.reason == "bad_manifest", (bad, ei.value)
        shutil.rmtree(d)


def _rewrite_meta(spath: str, edit, core) -> None:
    meta = S.read_meta(spath)
    edit(meta["tables"][0])
    payload = json.dumps(meta, sort_keys=True).encode()
    with open(os.path.join(spath, S.META_NAME), "wb") as f:
        f.write(struct.pack("<8sII", S.META_MAGIC, len(payload), core.crc32c(payload)) + payload)


@pytest.mark.parametrize("field", ["file", "image"])
def test_snapshot_meta_names_cannot_leave_the_snapshot(snapshot_store, tmp_path, field, core):
    s = snapshot_store
    lsn = s.snapshots[0]
    for i, pattern in enumerate(ESCAPES):
        d = s.copy(tmp_path / f"d{i}")
        spath = os.path.join(d, S.SNAPSHOTS_DIR, S.snapshot_name(lsn))
        entry = S.read_meta(spath)["tables"][0]
        target = entry["file"] if field == "file" else f"{entry['id']}.kvimg"
        # What the name points at is a good copy: a loader that followed it
        # would find every check passing.
        outside = tmp_path / "outside"
        outside.mkdir(exist_ok=True)
        src = os.path.join(spath, target)
        if not os.path.exists(src):  # the pure twin writes no image: any file will do
            src = os.path.join(spath, entry["file"])
        shutil.copy(src, outside / target)
        data = C.read(src)
        name = pattern.format(f=target, outside=outside)

        def edit(e):
            if field == "file":
                e["file"] = name
            else:
                e["image"] = {"file": name, "bytes": len(data), "crc32c": core.crc32c(data)}
        _rewrite_meta(spath, edit, core)
        got = check_recovery(sweep.opener(d, "strict"), s.ops, s.written, allow_error=True)
        assert got["outcome"] == "error" and got["reason"] == "bad_snapshot", (name, got)
        deep = verify(d, deep=True)
        assert [p.kind for p in deep.problems] == ["bad_snapshot"], (name, deep.as_dict())
        opened = []
        check_recovery(sweep.opener(d, "tolerate-tail", opened), s.ops, s.written)
        assert [(p.kind, p.lsn) for p in opened[0].recovery_report.problems] == \
            [("bad_snapshot", lsn)], name
        shutil.rmtree(d)


# -------------------------------------------------------- (c) 0600 and 0700
def test_every_file_is_0600_and_every_directory_0700(tmp_path):
    old = os.umask(0o022)  # the usual umask: it alone would give 0644 and 0755
    try:
        path = str(tmp_path / "state")
        s = sweep.build(path, 62, segment_bytes=4096, checkpoint_after=(30,))
        with Store.open(path) as store:
            store.checkpoint()
        # A torn tail cut by an open (quarantine/), then a repair (.broken copy).
        C.as_crashed(path)  # (a torn tail is what a crash leaves)
        C.truncate(s.segments()[-1], s.frames[-1].end - 3)
        Store.open(path).close()
        C.flip_bit(s.segments()[0], C.frames_of(s.segments()[0])[1].offset + 40, 1)
        assert repair(path).changed
        modes = {}
        for root, dirs, files in os.walk(path):
            for name in dirs + files + ["."]:
                p = os.path.join(root, name)
                modes[os.path.relpath(p, path)] = stat.S_IMODE(os.lstat(p).st_mode)
        wrong = {p: oct(m) for p, m in modes.items()
                 if m != (0o700 if os.path.isdir(os.path.join(path, p)) else 0o600)}
        assert wrong == {}
        names = " ".join(modes)
        for kind in ("wal/", "snapshots/", "META", "quarantine/", ".broken", "HINTS", "HISTORY",
                     "LOCK", "MANIFEST"):
            assert kind in names, (kind, sorted(modes))
    finally:
        os.umask(old)


# ------------------------------------------------- (d) LZ4 bounded by raw_len
# A child's peak RSS: VmHWM is this process's own (ru_maxrss would carry
# pytest's, which it inherits through fork and exec).
_PEAK_RSS = """
def PEAK_RSS_MIB():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) >> 10 for l in f if l.startswith("VmHWM"))
"""
_LZ4_CHILD = _PEAK_RSS + """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
from rehydrate import Store, verify, RehydrateError
report = verify(sys.argv[1])
out = {"ok": report.ok, "problems": [[p.kind, p.offset] for p in report.problems]}
try:
    Store.open(sys.argv[1]).close()
except RehydrateError as e:
    out["open"] = e.reason
out["peak_rss_mib"] = PEAK_RSS_MIB()
print(json.dumps(out))
"""


def _inflating_block(out_bytes: int) -> bytes:
    """An LZ4 block that decodes to ``out_bytes``: one literal, then one
    match at offset 1 whose length runs on in 255s, then 5 closing literals."""
    run = out_bytes - 6 - 4 - 15
    return (b"\x1f" + b"a" + b"\x01\x00" + b"\xff" * (run // 255) + bytes([run % 255])
            + b"\x50" + b"abcde")


@pytest.mark.timeout(120)
def test_an_lz4_block_that_would_inflate_beyond_raw_len_is_bad_payload(tmp_path, core,
                                                                       core_env):
    path = str(tmp_path / "s")
    s = sweep.build(path, 10, segment_bytes=1 << 20)
    block = _inflating_block(4 << 30)  # 4 GiB out of a 16 MiB block
    assert len(block) < F.MAX_FRAME_PAYLOAD_BYTES
    small = _inflating_block(100_000)
    with pytest.raises(ValueError):
        core.lz4_decompress(small, 1024)  # bounded by what the header says
    assert len(core.lz4_decompress(small, 100_000)) == 100_000  # (the block itself is good)
    seg = s.segments()[-1]
    offset = os.path.getsize(seg)
    header = struct.pack("<IIQIIIBBHI", F.FRAME_MAGIC, 0, s.written + 1, 1, len(block), 1024,
                         F.CODEC_LZ4, 0, 0, 0)
    C.append(seg, header + block)
    C.fix_frame_crc(seg, offset)  # so the block reaches the decoder
    out = subprocess.run([sys.executable, "-c", _LZ4_CHILD, path], env=core_env,
                         capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    # (the frame is also past where the last clean close left the log)
    assert (res["ok"], res["problems"], res["open"]) == \
        (False, [["bad_payload", offset], ["clean_end_mismatch", os.path.getsize(seg)]],
         "bad_payload"), res
    assert res["peak_rss_mib"] < 512, res


# ------------------------------------------------ (e) verify on a hostile wal/
def _hostile(s: sweep.Swept, tmp_path, kind: str):
    """A copy of ``s`` with one hostile entry in wal/; (dir, the entry's path)."""
    d = s.copy(tmp_path / kind)
    wal = os.path.join(d, "wal")
    entry = os.path.join(wal, segment_name(s.written + 1))
    if kind == "symlink-out":
        # The first segment moved outside, a link in its place: followed, it
        # would verify as the whole, healthy log.
        entry = os.path.join(wal, segment_name(1))
        os.rename(entry, tmp_path / "moved.wal")
        os.symlink(tmp_path / "moved.wal", entry)
    elif kind == "symlink-dev":
        os.symlink("/dev/zero", entry)
    elif kind == "fifo":
        os.mkfifo(entry)
    elif kind == "directory":
        os.mkdir(entry)
    return d, entry


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["symlink-out", "symlink-dev", "fifo", "directory"])
def test_verify_never_follows_or_reads_what_is_not_a_regular_segment(tmp_path, kind):
    s = sweep.build(tmp_path / "s", 62, segment_bytes=4096)
    d, entry = _hostile(s, tmp_path, kind)
    for mode in MODES:
        report = verify(d, recovery=mode)
        assert entry not in [seg.path for seg in report.segments]
        assert ("foreign_file", entry) in [(p.kind, p.path) for p in report.problems]
    if kind == "symlink-out":
        # Without its first segment the log has a hole: damage, reported.
        assert not report.ok and "missing_segment" in [p.kind for p in report.problems]
    else:
        assert report.ok and report.last_lsn == s.written


_SPARSE_CHILD = _PEAK_RSS + """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
from rehydrate import verify


def read_mib():  # bytes this process read (read, pread, ...), in MiB: the work done
    with open("/proc/self/io") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("rchar:")) >> 20


verify(sys.argv[2])  # a small store first: what verify imports is read then, not below
before = read_mib()
report = verify(sys.argv[1])
print(json.dumps({"ok": report.ok, "last_lsn": report.last_lsn,
                  "problems": [[p.kind, p.offset, p.bytes] for p in report.problems],
                  "read_mib": read_mib() - before, "peak_rss_mib": PEAK_RSS_MIB()}))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("closed", ["crashed", "cleanly"])
@pytest.mark.parametrize("where,size", [("newest-tail", 2 << 30), ("new-segment", 2 << 30),
                                        ("written-zeros", 40 << 20)],
                         ids=["2GiB-sparse-tail", "2GiB-sparse-segment", "40MiB-written-zeros"])
def test_verify_of_a_long_zero_tail_is_quick_and_small(tmp_path, where, size, core_env, closed):
    s = sweep.build(tmp_path / "s", 62, segment_bytes=4096)
    if closed == "crashed":
        C.as_crashed(s.path)  # a zero tail is a torn tail after a crash
    if where == "new-segment":  # a good header, then zeros
        seg = os.path.join(s.path, "wal", segment_name(s.written + 1))
        with open(seg, "wb") as f:
            f.write(encode_segment_header(s.written + 1))
    else:  # zeros after the newest segment's last frame
        seg = s.segments()[-1]
    start = os.path.getsize(seg)
    if where == "written-zeros":  # (not sparse: every zero is on disk, and read)
        C.append(seg, bytes(size - start))
    os.truncate(seg, size)
    small = sweep.build(tmp_path / "small", 10, segment_bytes=4096)
    out = subprocess.run([sys.executable, "-c", _SPARSE_CHILD, s.path, small.path], env=core_env,
                         capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    if closed == "crashed":
        assert (res["ok"], res["last_lsn"], res["problems"]) == \
            (True, s.written, [["torn_tail", start, size - start]]), res
    else:  # after a clean close the zeros are damage, and the log is not the one closed
        assert (res["ok"], res["last_lsn"], res["problems"]) == \
            (False, s.written, [["bad_magic", start, size - start],
                                ["clean_end_mismatch", size, 0]]), res
    # Bounded memory, and work bounded by the bytes on disk, not the file's
    # size: a hole is skipped, not read as 2 GiB of zeros (no clock involved).
    assert res["peak_rss_mib"] < 256, res
    on_disk = 0 if where != "written-zeros" else size >> 20
    assert on_disk <= res["read_mib"] <= on_disk + 64, res  # (2 GiB if holes were read)
