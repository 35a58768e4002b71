"""examples/fastapi_service.py under a real uvicorn process, over real HTTP:
a background open behind /rehydrate/readyz, async writes, the mounted
metrics, and a SIGTERM that uvicorn turns into the lifespan's close."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rehydrate import Store, manifest

from helpers.replication import wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _http(port, path, method="GET", body=None, accept=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if accept:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


GRACEFUL = (0, -signal.SIGTERM)


def closed_cleanly(state_dir):
    """The LSN at which the store's close recorded a clean end in the
    MANIFEST (only a close does: a killed process leaves none), or None."""
    man = manifest.read(str(state_dir))
    clean_end = man.get("clean_end")
    return None if clean_end is None else clean_end["lsn"]


class _Service:
    """uvicorn serving the example on a socket bound here (``--fd``), so the
    port is known before it starts and nobody else can take it."""

    def __init__(self, state_dir, env, sync):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        fd = self.sock.fileno()
        env = dict(env, STATE_DIR=str(state_dir), SYNC=sync,
                   PYTHONPATH=os.pathsep.join([str(EXAMPLES), env.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "fastapi_service:create_app",
             "--fd", str(fd), "--log-level", "warning", "--lifespan", "on"],
            env=env, pass_fds=[fd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_ready(self):
        def ready():
            assert self.proc.poll() is None, self.proc.communicate()
            try:
                return _http(self.port, "/rehydrate/readyz")[0] == 200
            except OSError:
                return False

        assert wait_until(ready, 60), "the service never became ready"

    def terminate(self):
        """SIGTERM; (exit status, stderr). uvicorn shuts down gracefully,
        then (0.29 and later) raises the signal it caught again, so the
        status is 0 or -SIGTERM: whether the lifespan closed the store is
        judged by the store's directory (``closed_cleanly``)."""
        os.kill(self.proc.pid, signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        self.sock.close()
        return self.proc.returncode, err.decode()

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()
        self.sock.close()


@pytest.fixture
def service(core_env):
    started = []

    def start(state_dir, sync="interval"):
        s = _Service(state_dir, core_env, sync)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


@pytest.mark.parametrize("sync", ["interval", "always"])
def test_fastapi_service_under_uvicorn(tmp_path, service, sync):
    state = tmp_path / "state"
    with Store.open(state) as s:  # a state to come back to
        for i in range(2000):
            s.put("sessions", f"s{i}", {"n": i})
        s.incr("counters", "seeded", 5)
    svc = service(state, sync)
    svc.wait_ready()

    code, _, body = _http(svc.port, "/rehydrate/readyz")
    assert code == 200 and json.loads(body)["ready"] is True
    assert _http(svc.port, "/rehydrate/livez")[0] == 200
    assert json.loads(_http(svc.port, "/sessions/s1999")[2]) == {"sid": "s1999",
                                                                "session": {"n": 1999}}
    assert _http(svc.port, "/sessions/nope")[0] == 404

    # Concurrent async writes through the service.
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: _http(svc.port, f"/counters/c{i % 10}?by=2",
                                              method="POST")[0], range(200)))
    assert codes == [200] * 200
    code, _, body = _http(svc.port, "/sessions/new", method="PUT", body={"cart": [1, 2]})
    assert code == 200
    last_lsn = json.loads(body)["lsn"]
    assert last_lsn == 2001 + 200 + 1
    assert json.loads(_http(svc.port, "/counters/c3")[2])["value"] == 40
    assert json.loads(_http(svc.port, "/counters/seeded")[2])["value"] == 5

    # The store's metrics, mounted in the service's own server.
    code, ctype, text = _http(svc.port, "/rehydrate/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    assert f'rehydrate_last_lsn{{store="{state}"}} {float(last_lsn)}' in text.decode()
    code, ctype, text = _http(svc.port, "/rehydrate/metrics",
                              accept="application/openmetrics-text")
    assert ctype.startswith("application/openmetrics-text") and text.endswith(b"# EOF\n")

    # SIGTERM: uvicorn runs the lifespan's shutdown, which closes the store.
    rc, err = svc.terminate()
    assert rc in GRACEFUL, err
    assert "Traceback" not in err
    assert closed_cleanly(state) == last_lsn
    with Store.open(state, recovery="strict") as s:
        assert s.lsn == last_lsn
        assert s.table("counters")["c3"] == 40
        assert s.table("sessions")["new"] == {"cart": [1, 2]}
        assert s.recovery_report.problems == []


def test_fastapi_service_reads_wait_for_their_table_not_the_loop(tmp_path, service):
    """While the background open replays, writes are admitted and probes
    answer; a read of a table still loading is a 503, never a hung loop."""
    state = tmp_path / "state"
    with Store.open(state) as s:
        with s.batch() as b:
            for i in range(300_000):
                b.put("sessions", i, i)
    svc = service(state)

    def probe():
        assert svc.proc.poll() is None, svc.proc.communicate()
        try:
            code, _, body = _http(svc.port, "/rehydrate/readyz")
        except OSError:
            return False
        if code == 503:
            assert json.loads(body)["phase"] != "failed"
        return code == 200

    assert wait_until(probe, 60), "the service never became ready"
    # Whatever the timing, a write in the service lands after the replay.
    code, _, body = _http(svc.port, "/counters/x", method="POST")
    assert code == 200 and json.loads(body)["lsn"] == 300_001
    assert json.loads(_http(svc.port, "/counters/x")[2])["value"] == 1
    rc, err = svc.terminate()
    assert rc in GRACEFUL, err
    assert "Traceback" not in err
    assert closed_cleanly(state) == 300_001
