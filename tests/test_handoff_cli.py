"""`rehydrate follow`, `promote` and `status` in a subprocess
(docs/replication.md, "Commands"): exit codes, JSON, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rehydrate import MovedError, Store

HELPERS = os.path.join(os.path.dirname(__file__), "helpers")
HANDOFF_WRITER = os.path.join(HELPERS, "handoff_writer.py")


def _cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "rehydrate", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_status_of_a_directory_names_its_writer_epoch_and_lsn(store_dir, core_env):
    with Store.open(store_dir) as p:
        p.put("t", 1, 1)
        p.sync()
        r = _cli("status", store_dir, "--json", env=core_env)
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["role"] == "primary" and info["epoch"] == 1 and info["lsn"] == 1
        assert info["store_id"] == p.store_id
    r = _cli("status", store_dir, env=core_env)
    assert r.returncode == 0 and r.stdout.startswith("no writer")


def test_promote_a_directory_drains_its_primary(store_dir, core_env):
    proc = subprocess.Popen([sys.executable, HANDOFF_WRITER, store_dir, "5", "4096"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=core_env,
                            text=True)
    try:
        assert proc.stdout.readline().startswith("ready")
        for _ in range(10):
            acked = int(proc.stdout.readline())
        r = _cli("promote", store_dir, "--json", "--timeout", "30", "--hold", "10",
                 env=core_env)
        assert r.returncode == 0, r.stderr
        result = json.loads(r.stdout)
        assert result["epoch"] == 2 and not result["failover"]
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "moved" in out.split(), err
        acked = max([acked] + [int(x) for x in out.split() if x.isdigit()])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with Store.open(store_dir, recovery="strict") as again:
        assert again.epoch == 2 and again.lsn >= acked
    r = _cli("promote", store_dir, env=core_env)  # no writer now: a failover
    assert r.returncode == 0 and "failover" in r.stdout and "Traceback" not in r.stderr


def test_follow_prints_the_lag_until_told_to_stop(store_dir, core_env):
    with Store.open(store_dir) as p:
        p.put("t", 1, 1)
        p.sync()
        r = _cli("follow", store_dir, "--json", "--interval", "0.05", "--for-s", "0.2",
                 env=core_env)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines and all(x["role"] == "standby" and x["lsn"] == 1 for x in lines)


def test_status_and_promote_over_http_with_a_token_from_the_environment(tmp_path, core_env):
    pdir, sdir = str(tmp_path / "p"), str(tmp_path / "s")
    p = Store.open(pdir, sync="always")
    server = p.serve_http(0, replication=True, token="t0ken")
    standby = Store.open_standby(sdir, f"http://127.0.0.1:{server.port}", token="t0ken")
    sserver = standby.serve_http(0, replication=True, token="t0ken")
    env = dict(core_env, REHYDRATE_TOKEN="t0ken")
    try:
        lsn = p.put("t", 1, 1)
        assert standby.wait_for_lsn(lsn, timeout=30)
        r = _cli("status", f"http://127.0.0.1:{sserver.port}", "--json", env=env)
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["role"] == "standby" and info["lsn"] == lsn and "lag" in info
        assert "t0ken" not in r.stdout + r.stderr
        r = _cli("promote", f"http://127.0.0.1:{sserver.port}", "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["epoch"] == 2
        assert standby.role == "primary" and p.role == "moved"
        with pytest.raises(MovedError):
            p.put("t", 2, 2)
        # A wrong token: refused, typed, no traceback, the token not echoed.
        r = _cli("status", f"http://127.0.0.1:{sserver.port}",
                 env=dict(core_env, REHYDRATE_TOKEN="wrong"))
        assert r.returncode == 1 and "unauthorized" in r.stderr
        assert "Traceback" not in r.stderr and "wrong" not in r.stderr
    finally:
        sserver.close()
        server.close()
        standby.close()
        p.close()


@pytest.mark.parametrize("args, code", [
    (("status", "/nonexistent/dir"), 2),
    (("follow", "http://127.0.0.1:9"), 2),           # a URL needs DIR
    (("status", "http://127.0.0.1:9"), 1),           # nothing listens there
    (("promote", "/nonexistent/dir"), 2),
    (("follow", "somewhere", "elsewhere"), 2),       # a local source is followed in place
], ids=["status-missing", "follow-no-dir", "status-refused", "promote-missing",
        "follow-two-dirs"])
def test_bad_input_is_a_typed_message_not_a_traceback(args, code, core_env, tmp_path):
    r = _cli(*args, env=core_env)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.startswith("rehydrate ")


def test_a_token_file_that_is_missing_or_empty_is_a_usage_error(tmp_path, core_env):
    empty = tmp_path / "empty"
    empty.write_text("")
    for path in (str(empty), str(tmp_path / "missing")):
        r = _cli("status", "http://127.0.0.1:9", "--token-file", path, env=core_env)
        assert r.returncode == 2 and "--token-file" in r.stderr
        assert "Traceback" not in r.stderr
