"""`rehydrate restore`, `verify URI` and `archive ls` in a subprocess, on
file:// archives a real store wrote (docs/archive.md): restores compared
with the store's content, damaged archives, bad arguments."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from rehydrate import ArchiveError, ConfigError, Store
from rehydrate._backend import core
from rehydrate.archive import (
    MANIFEST_OBJECT,
    decode_manifest,
    encode_manifest,
    part_name,
    read_manifest,
    snapshot_object,
)
from rehydrate.archive_cli import exit_code
from rehydrate.objstore import open_object_store
from rehydrate.archive_restore import restore


def test_reading_a_file_uri_creates_no_directory(tmp_path):
    where = tmp_path / "nothing" / "here"
    with pytest.raises(ArchiveError) as e:
        restore(where.as_uri(), str(tmp_path / "out"))
    assert e.value.reason == "no_archive"
    assert not where.exists() and not (tmp_path / "nothing").exists()
    open_object_store(where.as_uri(), create=False)
    assert not where.exists()
    open_object_store(where.as_uri())  # (a writer's: made)
    assert where.is_dir()


@pytest.mark.parametrize("uri", ["s3://", "gs://", "s3://?region=x"])
def test_a_uri_naming_no_bucket_is_a_config_error(uri):
    with pytest.raises(ConfigError, match="names no bucket"):
        open_object_store(uri)


# --------------------------------------------------------------- archives
HEX = 24  # random bytes per value: the log does not compress much


class Made:
    """An archive a real store wrote (copied per test), and what it holds."""

    def __init__(self, root):
        rnd = random.Random(7)
        self.puts = []  # (key, value) of LSN 1, 2, ...
        self.arch = root / "arch"

        def put(s, key):
            value = rnd.randbytes(HEX).hex()
            s.put("t", key, value)
            self.puts.append((key, value))

        s = Store.open(str(root / "st"), archive=self.arch.as_uri(), archive_every_s=0.05,
                       segment_bytes=4096)
        try:
            for i in range(60):
                put(s, i % 50)
            s.checkpoint()
            self.snapshot_lsn = s.lsn
            for i in range(60):
                put(s, i)
            s.put("t", "big", rnd.randbytes(6000).hex())  # (a frame bigger than a segment:
            self.puts.append(("big", None))  # the next write starts a new one)
            assert s.wait_for_archive(timeout=20)
            self.mark_lsn = s.lsn  # a frame's end, archived
            time.sleep(0.15)  # (the time index's resolution: 0.1 s)
            self.mark_time = time.time()
            time.sleep(0.15)
            for r in range(3):  # parts of the segment being written
                for i in range(3):
                    put(s, 100 + i)
                assert s.wait_for_archive(timeout=20)
            self.batch_first = s.lsn + 1
            with s.batch() as b:
                for i in range(5):
                    value = rnd.randbytes(HEX).hex()
                    b.put("t", 200 + i, value)
                    self.puts.append((200 + i, value))
            put(s, 300)
            assert s.wait_for_archive(timeout=20)
            self.end = s.lsn
            self.content = s.table("t").to_dict()
            self.puts[self.mark_lsn - 1] = ("big", self.content["big"])
        finally:
            s.close()
        assert len(self.puts) == self.end
        man = read_manifest(open_object_store(self.arch.as_uri()))
        assert [x["lsn"] for x in man["snapshots"]] == [self.snapshot_lsn]
        assert any(seg["sealed"] for seg in man["segments"])
        assert len(man["segments"][-1]["parts"]) >= 3 and not man["segments"][-1]["sealed"]

    def state(self, lsn):
        return dict(self.puts[:lsn])


_MADE = {}


@pytest.fixture
def made(core_name, tmp_path_factory):
    if core_name not in _MADE:
        _MADE[core_name] = Made(tmp_path_factory.mktemp(f"archive-{core_name}"))
    return _MADE[core_name]


@pytest.fixture
def arch(made, tmp_path):
    """A copy of the made archive, this test's to damage."""
    dest = tmp_path / "arch"
    shutil.copytree(made.arch, dest)
    return dest


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "rehydrate", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def _content(path):
    with Store.open(str(path), recovery="strict") as s:
        return s.lsn, s.table("t").to_dict()


# ---------------------------------------------------------------- restore
def test_restore_to_the_end_opens_as_the_store_was(made, arch, tmp_path, core_env):
    r = _cli("restore", arch.as_uri(), tmp_path / "out", env=core_env)
    assert r.returncode == 0, r.stderr
    assert f"at LSN {made.end}" in r.stdout and f"snapshot LSN {made.snapshot_lsn}" in r.stdout
    assert "inside a frame" not in r.stdout
    assert _content(tmp_path / "out") == (made.end, made.content)


def test_restore_to_an_lsn(made, arch, tmp_path, core_env):
    r = _cli("restore", arch.as_uri(), tmp_path / "out", "--to-lsn", made.mark_lsn, "--json",
             env=core_env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["lsn"] == info["target_lsn"] == made.mark_lsn and not info["inside_frame"]
    assert info["snapshot_lsn"] == made.snapshot_lsn and info["segments"] >= 1
    assert info["requests"]["LIST"] == 0 and info["bytes"] > 0
    assert _content(tmp_path / "out") == (made.mark_lsn, made.state(made.mark_lsn))


def test_restore_to_an_lsn_inside_a_frame_stops_at_the_frame_before(made, arch, tmp_path,
                                                                    core_env):
    inside = made.batch_first + 2  # (the batch is one frame)
    r = _cli("restore", arch.as_uri(), tmp_path / "out", "--to-lsn", inside, env=core_env)
    assert r.returncode == 0, r.stderr
    before = made.batch_first - 1
    assert (f"LSN {inside} is inside a frame; restored to the last frame end at {before}"
            in r.stdout)
    assert _content(tmp_path / "out") == (before, made.state(before))


def test_restore_to_a_time(made, arch, tmp_path, core_env):
    when = dt.datetime.fromtimestamp(made.mark_time, dt.timezone.utc).isoformat()
    r = _cli("restore", arch.as_uri(), tmp_path / "out", "--to-time", when, "--json",
             env=core_env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["lsn"] == info["target_lsn"] == made.mark_lsn and info["to_time"] == when
    assert _content(tmp_path / "out") == (made.mark_lsn, made.state(made.mark_lsn))


# ------------------------------------------------------------- archive ls
def test_archive_ls_lists_the_manifest_with_one_get(made, arch, core_env):
    r = _cli("archive", "ls", arch.as_uri(), "--json", env=core_env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["requests"]["GET"] == 1 and info["requests"]["LIST"] == 0
    assert info["lsn_range"] == [made.snapshot_lsn, made.end] == [
        made.snapshot_lsn, info["archived_lsn"]]
    (snap,) = info["snapshots"]
    assert snap["lsn"] == made.snapshot_lsn and snap["files"] >= 2 and snap["bytes"] > 0
    assert dt.datetime.fromisoformat(snap["time"].replace("Z", "+00:00")).year >= 2024
    segs = info["segments"]
    assert segs[0]["first_lsn"] == made.snapshot_lsn + 1 and segs[-1]["last_lsn"] == made.end
    assert all(a["last_lsn"] + 1 == b["first_lsn"] for a, b in zip(segs, segs[1:]))
    assert segs[0]["sealed"] and not segs[-1]["sealed"] and segs[-1]["parts"] >= 3
    for g in segs:
        assert g["bytes"] > 0 and g["t_first"] <= g["t_last"] and len(g["objects"]) == g["parts"]
    r = _cli("archive", "ls", arch.as_uri(), env=core_env)
    assert r.returncode == 0, r.stderr
    assert f"restorable LSN {made.snapshot_lsn}..{made.end}" in r.stdout
    assert f"LSN {made.snapshot_lsn}  " in r.stdout and "sealed" in r.stdout


# ----------------------------------------------------------------- verify
def test_verify_a_good_archive(made, arch, core_env):
    r = _cli("verify", arch.as_uri(), "--json", env=core_env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["ok"] and info["problems"] == [] and info["orphans"] == []
    assert info["snapshots"] == 1 and info["archived_lsn"] == made.end
    assert info["segments"] == len(read_manifest(open_object_store(arch.as_uri()))["segments"])
    assert info["requests"]["LIST"] == 1 and info["requests"]["PUT"] == 0
    assert info["bytes"] >= sum(f.stat().st_size for f in arch.rglob("*") if f.is_file())
    r = _cli("verify", arch.as_uri(), env=core_env)
    assert r.returncode == 0 and r.stdout.startswith("OK: "), r.stderr


def test_verify_of_a_directory_still_verifies_the_directory(made, arch, tmp_path, core_env):
    restore(arch.as_uri(), str(tmp_path / "out"))
    r = _cli("verify", tmp_path / "out", "--json", env=core_env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["last_lsn"] == made.end


def _manifest(arch):
    return decode_manifest((arch / MANIFEST_OBJECT).read_bytes(), "")


def _write_manifest(arch, man):
    (arch / MANIFEST_OBJECT).write_bytes(encode_manifest(man))


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


def _sealed(man):
    seg = next(s for s in man["segments"] if s["sealed"])
    return seg, seg["parts"][0]


def _open_part(man):
    seg = man["segments"][-1]
    return seg, seg["parts"][1]


def _damage(case, arch):
    """Damage the archive copy; returns (kind, object) verify must report."""
    man = _manifest(arch)
    snap = man["snapshots"][0]
    big = max(snap["files"], key=lambda f: f["bytes"])
    snap_obj = snapshot_object(snap["lsn"], big["name"])
    if case == "sealed_segment_byte":
        seg, part = _sealed(man)
        _flip(arch / part_name(seg, part), part["bytes"] // 2)
        return "bad_object", part_name(seg, part)
    if case == "part_byte":
        seg, part = _open_part(man)
        _flip(arch / part_name(seg, part), part["bytes"] // 2)
        return "bad_object", part_name(seg, part)
    if case == "frame_byte_listed_as_is":  # (a CRC32C that matches bad bytes: the frames tell)
        seg, part = _sealed(man)
        path = arch / part_name(seg, part)
        _flip(path, part["bytes"] - 3)
        part["crc32c"] = core().crc32c(path.read_bytes()[:part["bytes"]])
        _write_manifest(arch, man)
        return "corrupt", part_name(seg, part)
    if case == "snapshot_byte":
        _flip(arch / snap_obj, big["bytes"] // 2)
        return "bad_object", snap_obj
    if case == "snapshot_byte_listed_as_is":
        path = arch / snap_obj
        _flip(path, big["bytes"] // 2)
        big["crc32c"] = core().crc32c(path.read_bytes())
        _write_manifest(arch, man)
        return "corrupt", snap_obj
    if case == "trailer_byte":
        seg, part = _open_part(man)
        _flip(arch / part_name(seg, part), part["object_bytes"] - 1)
        return "bad_object", part_name(seg, part)
    if case == "manifest_byte":
        _flip(arch / MANIFEST_OBJECT, 30)
        return "bad_manifest", MANIFEST_OBJECT
    if case == "deleted_part":
        seg, part = _open_part(man)
        (arch / part_name(seg, part)).unlink()
        return "missing_object", part_name(seg, part)
    if case == "deleted_snapshot_file":
        (arch / snap_obj).unlink()
        return "missing_object", snap_obj
    if case == "truncated_segment":
        seg, part = _sealed(man)
        os.truncate(arch / part_name(seg, part), part["bytes"] // 2)
        return "bad_object", part_name(seg, part)
    if case == "truncated_snapshot_file":
        os.truncate(arch / snap_obj, 10)
        return "bad_object", snap_obj
    if case == "grown_part":
        seg, part = _open_part(man)
        with open(arch / part_name(seg, part), "ab") as f:
            f.write(b"\0" * 8)
        return "bad_object", part_name(seg, part)
    raise AssertionError(case)


DAMAGE = ["sealed_segment_byte", "part_byte", "frame_byte_listed_as_is", "snapshot_byte",
          "snapshot_byte_listed_as_is", "trailer_byte", "manifest_byte", "deleted_part",
          "deleted_snapshot_file", "truncated_segment", "truncated_snapshot_file",
          "grown_part"]


@pytest.mark.parametrize("case", DAMAGE)
def test_verify_names_the_damaged_object(case, arch, core_env):
    kind, obj = _damage(case, arch)
    r = _cli("verify", arch.as_uri(), "--json", env=core_env)
    assert r.returncode == 1, (r.stdout, r.stderr)
    info = json.loads(r.stdout)
    assert not info["ok"]
    assert [(p["kind"], p["object"]) for p in info["problems"]] == [(kind, obj)], info
    (p,) = info["problems"]
    assert p["detail"] and set(p) == {"kind", "object", "offset", "lsn", "detail"}
    if kind != "bad_manifest":
        assert p["lsn"] is not None
    if kind in ("bad_object", "corrupt") and case != "snapshot_byte_listed_as_is":
        assert p["offset"] is not None


@pytest.mark.parametrize("case", ["part_byte", "manifest_byte"])
def test_verify_prints_the_damaged_object(case, arch, core_env):
    kind, obj = _damage(case, arch)
    r = _cli("verify", arch.as_uri(), env=core_env)
    assert r.returncode == 1 and r.stdout.startswith("DAMAGED: "), r.stderr
    assert f"  {kind}: {obj}" in r.stdout and r.stderr == ""


def test_a_corrupt_frame_is_named_by_its_offset_and_lsn(made, arch, core_env):
    man = _manifest(arch)
    seg, part = _open_part(man)
    path = arch / part_name(seg, part)
    _flip(path, part["bytes"] - 3)
    part["crc32c"] = core().crc32c(path.read_bytes()[:part["bytes"]])
    _write_manifest(arch, man)
    (p,) = json.loads(_cli("verify", arch.as_uri(), "--json", env=core_env).stdout)["problems"]
    assert p["kind"] == "corrupt" and p["object"] == part_name(seg, part)
    prev = seg["parts"][0]
    assert 0 <= p["offset"] < part["bytes"] and p["lsn"] == prev["last"] + 1


def test_restore_refuses_what_verify_reports(arch, tmp_path, core_env):
    _damage("sealed_segment_byte", arch)
    r = _cli("restore", arch.as_uri(), tmp_path / "out", env=core_env)
    assert r.returncode == 1 and "[bad_object]" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_orphans_are_listed_not_damage(arch, core_env):
    (arch / "wal" / f"{1:020d}.{0:020d}.part").write_bytes(b"x" * 5)
    (arch / "notes.txt").write_text("hello")
    r = _cli("verify", arch.as_uri(), "--json", env=core_env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["ok"] and info["orphans"] == [
        {"object": "notes.txt", "bytes": 5, "kind": "unknown"},
        {"object": f"wal/{1:020d}.{0:020d}.part", "bytes": 5, "kind": "unlisted"}]
    r = _cli("verify", arch.as_uri(), env=core_env)
    assert r.returncode == 0 and "unlisted: wal/" in r.stdout


# ------------------------------------------------------- usage and errors
def _bad_args(arch, tmp):
    full = tmp / "full"
    full.mkdir()
    (full / "x").write_text("x")
    uri = arch.as_uri()
    nothing = (tmp / "nothing").as_uri()
    return {
        "verify_s3_no_bucket": ["verify", "s3://"],
        "ls_unknown_scheme": ["archive", "ls", "nosuch://x/y"],
        "restore_relative_file_uri": ["restore", "file://relative/x", tmp / "o"],
        "restore_no_scheme": ["restore", str(arch), tmp / "o"],
        "ls_no_archive": ["archive", "ls", nothing],
        "verify_no_archive": ["verify", nothing],
        "restore_no_archive": ["restore", nothing, tmp / "o"],
        "restore_into_a_full_dir": ["restore", uri, full],
        "restore_past_the_end": ["restore", uri, tmp / "o", "--to-lsn", 10 ** 9],
        "restore_before_the_oldest_base": ["restore", uri, tmp / "o", "--to-lsn", 3],
        "restore_negative_lsn": ["restore", uri, tmp / "o", "--to-lsn", -1],
        "restore_bad_time": ["restore", uri, tmp / "o", "--to-time", "yesterday"],
        "restore_time_before_the_archive": ["restore", uri, tmp / "o", "--to-time",
                                            "2001-01-01T00:00:00Z"],
        "restore_parallel_0": ["restore", uri, tmp / "o", "--parallel", 0],
        "verify_uri_deep": ["verify", uri, "--deep"],
    }


BAD_ARGS = ["verify_s3_no_bucket", "ls_unknown_scheme", "restore_relative_file_uri",
            "restore_no_scheme", "ls_no_archive", "verify_no_archive", "restore_no_archive",
            "restore_into_a_full_dir", "restore_past_the_end", "restore_before_the_oldest_base",
            "restore_negative_lsn", "restore_bad_time", "restore_time_before_the_archive",
            "restore_parallel_0", "verify_uri_deep"]


@pytest.mark.parametrize("case", BAD_ARGS)
def test_bad_uris_and_arguments_are_usage_errors_in_one_line(case, arch, tmp_path, core_env):
    args = _bad_args(arch, tmp_path)[case]
    r = _cli(*args, env=core_env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rehydrate {args[0]}: "), r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("args", [["restore", "URI", "D", "--to-lsn", "1", "--to-time", "x"],
                                  ["restore", "URI"], ["archive"], ["archive", "ls"],
                                  ["restore", "URI", "D", "--to-lsn", "ten"]])
def test_argument_errors_exit_2(args, core_env):
    r = _cli(*args, env=core_env)
    assert r.returncode == 2 and "rehydrate: error:" in r.stderr and "Traceback" not in r.stderr


def test_exit_codes_of_archive_errors():
    assert exit_code(ArchiveError("x", reason="unreachable")) == 2
    assert exit_code(ArchiveError("x", reason="no_target")) == 2
    assert exit_code(ArchiveError("x", reason="missing_object")) == 1
    assert exit_code(ArchiveError("x", reason="corrupt")) == 1
