"""``rehydrate bench`` (docs/bench.md): the measurement, its JSON and plot,
the baselines (a real redis-server where there is one), bad parameters,
``--dir`` safety, a Redis that fails, no disk space, Ctrl-C; both cores."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from rehydrate import cli
from rehydrate.bench import baselines as B
from rehydrate.bench import run as bench_run

from helpers.tier import missing_tool

SMALL = ["--records", "6000", "--keys", "1500", "--repeat", "2"]
HAVE_REDIS = shutil.which("redis-server") is not None
NO_REDIS = "redis-server is not installed (Debian's redis-server; `make redis` installs it)"


def _bench(core_env, *args):
    return subprocess.run([sys.executable, "-m", "rehydrate", "bench", *args], env=core_env,
                          capture_output=True, text=True)


def test_json_report_with_every_baseline(core_env, tmp_path, core_name):
    png = tmp_path / "b.png"
    r = _bench(core_env, *SMALL, "--snapshot-at", "0.5", "--json", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["records"] == 6000 and out["core"] == core_name
    assert 0 < out["keys"] <= 1500 * 2  # put keys and counters
    assert set(out["phases"]) >= {"plan", "snapshot", "replay", "migrate", "populate",
                                  "prime", "other"}
    assert out["phases"]["snapshot"]["median"] > 0  # it loaded the snapshot
    c = out["cold_open"]
    assert c["min"] <= out["cold_open_s"] <= c["max"]
    assert out["records_per_s"] == pytest.approx(6000 / out["cold_open_s"])
    assert out["peak_rss_bytes"] > 0 and out["mb_per_s"] > 0
    expected = {"python_msgpack_dict", "pickle_load", "sqlite"}
    if HAVE_REDIS:
        expected |= {"redis_aof", "redis_rdb"}
    else:
        assert set(out["skipped"]) == {"redis_aof", "redis_rdb"}
    assert set(out["baselines"]) == expected
    if HAVE_REDIS:
        assert out["skipped"] == {}
    else:  # the rest was checked; the Redis comparisons were not
        missing_tool(NO_REDIS)
    for name, seconds in out["baselines"].items():
        assert out["ratios"][name] == pytest.approx(out["cold_open_s"] / seconds)
        assert len(out["baseline_runs"][name]) == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["machine"]["cpus"] >= 1


def test_human_output_is_a_table(core_env):
    r = _bench(core_env, *SMALL)
    assert r.returncode == 0, r.stderr
    assert "replay" in r.stdout and "total" in r.stdout and "pickle_load" in r.stdout
    assert "rehydrate / it" in r.stdout and "working in" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--records", "0"], "--records must be >= 1"),
    (["--records", "100", "--keys", "1000"], "cannot exceed --records"),
    (["--value-bytes", "-3"], "--value-bytes must be"),
    (["--mix", "0:1:1"], "puts > 0"),
    (["--mix", "a:b"], "--mix is put:incr:delete"),
    (["--snapshot-at", "1.5"], "--snapshot-at is a fraction"),
    (["--repeat", "0"], "--repeat must be >= 1"),
])
def test_nonsense_parameters_are_refused(core_env, args, message):
    r = _bench(core_env, *args)
    assert r.returncode == 2 and message in r.stderr and r.stdout == ""


def test_a_dir_that_is_not_ours_is_refused_and_left_alone(core_env, tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    r = _bench(core_env, *SMALL, "--dir", str(d))
    assert r.returncode == 2 and "not a bench directory" in r.stderr
    assert os.listdir(d) == ["precious.txt"]


def test_keep_then_reuse_our_dir(core_env, tmp_path):
    d = tmp_path / "work"
    r = _bench(core_env, *SMALL, "--dir", str(d), "--keep")
    assert r.returncode == 0, r.stderr
    assert {"state", "ops.msgpack", "state.pickle", "state.sqlite", ".rehydrate-bench"} <= \
        set(os.listdir(d))
    r = _bench(core_env, *SMALL, "--dir", str(d))  # ours: emptied, rebuilt, then cleaned
    assert r.returncode == 0, r.stderr
    assert os.listdir(d) == [".rehydrate-bench"]


def _args(tmp_path, **kw):
    (tmp_path / "w").mkdir()  # given, empty: ours to fill and to empty again
    args = cli.build_parser().parse_args(["bench", *SMALL, "--json",
                                          "--dir", str(tmp_path / "w")])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_without_redis_its_baselines_are_skipped_and_said(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(B, "redis_available", lambda: False)
    assert bench_run.main(_args(tmp_path)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["skipped"] == {"redis_aof": "redis-server is not on PATH",
                              "redis_rdb": "redis-server is not on PATH"}
    assert set(out["baselines"]) == {"python_msgpack_dict", "pickle_load", "sqlite"}


def test_a_redis_that_fails_to_start_is_reported_and_the_rest_measured(tmp_path, monkeypatch,
                                                                       capsys):
    if not HAVE_REDIS:
        missing_tool(NO_REDIS)
    real_build = bench_run.build

    def build_then_damage(work, w, redis, progress=None):
        built = real_build(work, w, redis, progress)
        with open(os.path.join(built["paths"]["redis_aof"], "appendonly.aof"), "r+b") as f:
            f.write(b"garbage that is not a Redis command")
        return built

    monkeypatch.setattr(bench_run, "build", build_then_damage)
    assert bench_run.main(_args(tmp_path)) == 0
    out = json.loads(capsys.readouterr().out)
    assert "redis-server exited" in out["skipped"]["redis_rdb"]
    assert "redis-server exited" in out["skipped"]["redis_aof"]
    assert set(out["baselines"]) == {"python_msgpack_dict", "pickle_load", "sqlite"}
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True)
    assert leftovers.stdout == b""  # every server we started is stopped


def test_no_disk_space_is_a_clean_error_and_removes_the_data(tmp_path, monkeypatch, capsys):
    real_build = bench_run.build

    def full_disk(work, w, redis, progress=None):
        real_build(work, w, redis, progress)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bench_run, "build", full_disk)
    assert bench_run.main(_args(tmp_path)) == 2
    assert "no space left" in capsys.readouterr().err
    assert os.listdir(tmp_path / "w") == [".rehydrate-bench"]


def test_ctrl_c_removes_the_temporary_data(core_env):
    proc = subprocess.Popen([sys.executable, "-m", "rehydrate", "bench", "--records",
                             "3000000", "--keys", "100000"], env=core_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "working in" in line
        work = line.split("working in", 1)[1].strip()
        assert os.path.isdir(work)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert not os.path.exists(work)
