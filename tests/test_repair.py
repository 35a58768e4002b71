"""``repair``: cut a damaged log at its first problem, keep evidence, touch
nothing healthy; afterwards the log opens under strict and takes writes."""

import json
import os
import random
import subprocess
import sys

import pytest

from rehydrate import LockedError, Store, verify
from rehydrate.repair import repair

from helpers import corrupt as C


def _value(i):
    return {"i": i, "pad": random.Random(i).randbytes(100)}  # incompressible


def _build(path, n=60):
    with Store.open(path, sync="always", segment_bytes=4096) as s:
        for i in range(n):
            s.put("t", i, _value(i))
    return n


def _tree(path):
    return C.tree_hashes(path)


def test_a_healthy_directory_is_never_touched(tmp_path):
    path = str(tmp_path / "s")
    _build(path)
    before = _tree(path)
    for dry in (True, False):
        r = repair(path, dry_run=dry)
        assert not r.changed and r.problems == [] and r.bytes_removed == 0
    assert _tree(path) == before


def test_a_torn_tail_is_cut_with_a_whole_copy_kept(tmp_path):
    path = str(tmp_path / "s")
    n = _build(path)
    seg = C.segment_paths(path)[-1]
    last = C.frames_of(seg)[-1]
    C.truncate(seg, last.end - 5)
    original = C.read(seg)
    dry = repair(path, dry_run=True)
    assert dry.changed and C.read(seg) == original  # a dry run changes nothing
    r = repair(path)
    assert r.cut == [{"path": seg, "offset": last.offset, "bytes": len(original) - last.offset,
                      "evidence": r.cut[0]["evidence"]}]
    assert C.read(r.cut[0]["evidence"]) == original
    assert os.path.getsize(seg) == last.offset
    with Store.open(path, recovery="strict") as s:
        assert s.lsn == n - 1 and s.recovery_report.problems == []
        for i in range(10):
            s.put("after", i, i)
    with Store.open(path, recovery="strict") as s:
        assert s.lsn == n - 1 + 10 and len(s.table("after")) == 10


def test_damage_in_the_middle_cuts_there_and_moves_later_segments_aside(tmp_path):
    path = str(tmp_path / "s")
    _build(path)
    segs = C.segment_paths(path)
    assert len(segs) >= 3
    frame = C.frames_of(segs[1])[1]
    C.flip_bit(segs[1], frame.offset + 40, 2)
    report = verify(path)
    assert not report.ok
    r = repair(path)
    assert r.changed and r.cut[0]["path"] == segs[1] and r.cut[0]["offset"] == frame.offset
    assert [m["path"] for m in r.moved] == segs[2:]
    assert all(os.path.exists(m["to"]) for m in r.moved)
    assert r.last_lsn == frame.first_lsn - 1
    after = verify(path, recovery="strict")
    assert after.ok and after.last_lsn == r.last_lsn
    with Store.open(path, recovery="strict") as s:
        assert s.lsn == r.last_lsn
        assert s.table("t").to_dict() == {i: _value(i) for i in range(r.last_lsn)}


def test_repair_refuses_a_directory_a_live_store_holds(tmp_path):
    path = str(tmp_path / "s")
    _build(path, 3)
    with Store.open(path):
        with pytest.raises(LockedError):
            repair(path)


def test_cli_repair_json_and_exit_codes(tmp_path, core_env):
    path = str(tmp_path / "s")
    _build(path)
    seg = C.segment_paths(path)[-1]
    C.truncate(seg, os.path.getsize(seg) - 7)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "rehydrate", "repair", path, *args],
                              env=core_env, capture_output=True, text=True)

    dry = run("--dry-run", "--json")
    assert dry.returncode == 1, dry.stderr  # something to repair
    assert json.loads(dry.stdout)["changed"] is True
    done = run("--json")
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert d["changed"] and d["bytes_removed"] > 0 and d["cut"][0]["evidence"].endswith(".broken")
    again = run()
    assert again.returncode == 0 and "nothing to repair" in again.stdout
    missing = subprocess.run([sys.executable, "-m", "rehydrate", "repair",
                              str(tmp_path / "nope")], env=core_env, capture_output=True)
    assert missing.returncode == 2
