"""A standby of a primary over real HTTP on 127.0.0.1 (docs/replication.md):
bootstrap, resume, reconnect, re-bootstrap after a trim, security, the
two-phase handoff under load, and faults. Every test compares the
standby's state with the primary's (helpers/standby_http.py: every table
kind, where an incr or a custom table shows a record applied twice).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time

import pytest

from rehydrate import (
    HandoffError, MovedError, ReadOnlyError, ReplicationError, Store,
)
from rehydrate import manifest as _manifest
from rehydrate.replication_client import ReplicationClient
from rehydrate.snapshot import snapshot_name
from rehydrate.wal import list_segments

from helpers.replication import wait_until
from helpers.standby_http import KINDS, TOKEN, state, write_round

HELPER = os.path.join(os.path.dirname(__file__), "helpers", "standby_http.py")


# ------------------------------------------------------------------ helpers
class Served:
    """A primary store and its replication server; ``restart(port)`` binds
    a new server (the old one closed)."""

    def __init__(self, path: str, **options) -> None:
        options.setdefault("tables", KINDS)
        options.setdefault("segment_bytes", 4096)
        self.path = path
        self.store = Store.open(path, **options)
        self.server = self.store.serve_http(0, replication=True, token=TOKEN)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def restart(self, port: int = 0) -> None:
        self.server.close()
        self.server = self.store.serve_http(port, replication=True, token=TOKEN)

    def write(self, rounds: int, start: int = 0) -> int:
        last = 0
        for i in range(start, start + rounds):
            last = write_round(self.store, i)
            if i % 4 == 3:
                self.store.sync()  # (small frames: several 4 KiB segments)
        self.store.sync()
        return last

    def close(self) -> None:
        self.server.close()
        self.store.close()


@pytest.fixture
def primary(tmp_path):
    p = Served(str(tmp_path / "primary"))
    yield p
    p.close()


def standby(path, url, **kw):
    kw.setdefault("token", TOKEN)
    kw.setdefault("tables", KINDS)
    return Store.open_standby(str(path), url, **kw)


def files_of(path) -> dict:
    """{relative path: bytes} of every file under ``path`` (the LOCK aside)."""
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            if name == "LOCK":
                continue
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


def caught_up(s, p, timeout=30.0) -> None:
    target = p.store.lsn
    assert s.wait_for_lsn(target, timeout=timeout), (s.lsn, target, s.lag, s.follow_error)
    assert state(s) == state(p.store)


class Lines:
    """A child process's stdout lines, read on a thread: ``wait(pred)``
    returns the first line that satisfies ``pred`` within the timeout."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.q.put(line.strip())
        self.q.put(None)

    def wait(self, pred, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no such line from the child in time"
            line = self.q.get(timeout=left)
            assert line is not None, f"the child ended: {self.proc.stderr.read()}"
            if pred(line):
                return line


def spawn(env, *args) -> tuple[subprocess.Popen, Lines]:
    proc = subprocess.Popen([sys.executable, HELPER, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    return proc, Lines(proc)


def kill9(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# ---------------------------------------------------------------- bootstrap
@pytest.mark.parametrize("with_snapshot", [True, False], ids=["snapshot", "no-snapshot"])
def test_bootstrap_gives_the_primarys_state_and_a_strictly_recoverable_copy(
        tmp_path, with_snapshot):
    p = Served(str(tmp_path / "primary"), keep_snapshots=1)
    own = tmp_path / "standby"
    try:
        p.write(60)
        if with_snapshot:
            p.store.checkpoint()
            p.write(60, 60)
            p.store.checkpoint()  # keep_snapshots=1: the log before it is trimmed
            assert _manifest.read(p.path)["log_start"] > 1
        p.write(40, 120)
        s = standby(own, p.url)
        try:
            assert s.role == "standby"
            caught_up(s, p)
            snaps = sorted(os.listdir(own / "snapshots")) if (own / "snapshots").exists() \
                else []
            assert len(snaps) == (1 if with_snapshot else 0), snaps
            assert s.store_id == p.store.store_id and s.epoch == p.store.epoch
            p.write(30, 200)  # and it follows live writes
            caught_up(s, p)
            r = s.readiness()
            assert r["ready"] and r["role"] == "standby", r
            with pytest.raises(ReadOnlyError):
                s.put("kv", "x", 1)
            want, lsn = state(p.store), p.store.lsn
        finally:
            s.close()
        with Store.open(str(own), tables=KINDS, recovery="strict") as again:
            assert state(again) == want and again.lsn == lsn
            assert not again.recovery_report.problems
            assert again.store_id == p.store.store_id
    finally:
        p.close()


# ------------------------------------------------------------------- resume
def test_a_reopened_standby_resumes_from_its_copy_without_a_second_download(
        primary, tmp_path, monkeypatch):
    downloads = []
    real = ReplicationClient.download_snapshot

    def counting(self, lsn, dest):
        downloads.append(lsn)
        return real(self, lsn, dest)

    monkeypatch.setattr(ReplicationClient, "download_snapshot", counting)
    own = tmp_path / "standby"
    primary.write(50)
    primary.store.checkpoint()
    primary.write(20, 50)
    s = standby(own, primary.url)
    try:
        caught_up(s, primary)
    finally:
        s.close()
    assert len(downloads) == 1
    snaps = sorted(os.listdir(own / "snapshots"))
    primary.write(80, 70)
    s = standby(own, primary.url)
    try:
        caught_up(s, primary)
        assert len(downloads) == 1, "a copy with a MANIFEST resumes; it is not bootstrapped again"
        assert sorted(os.listdir(own / "snapshots")) == snaps
    finally:
        s.close()


def test_a_standby_process_killed_mid_follow_resumes_and_applies_nothing_twice(
        primary, tmp_path, core_env):
    own = str(tmp_path / "standby")
    primary.write(20)
    proc, lines = spawn(core_env, "standby", own, primary.url, TOKEN)
    stop = threading.Event()
    errors: list = []

    def writer():
        i = 20
        try:
            while not stop.is_set() and i < 2000:
                write_round(primary.store, i)
                i += 1
        except BaseException as e:  # (reported below)
            errors.append(e)

    t = threading.Thread(target=writer)
    try:
        lines.wait(lambda line: line.startswith("ready "))
        t.start()
        lines.wait(lambda line: line.startswith("lsn ") and int(line.split()[1]) >= 200)
        kill9(proc)  # while the primary goes on writing
    finally:
        stop.set()
        t.join()
        kill9(proc)
    assert not errors, errors
    primary.store.sync()
    s = standby(own, primary.url)
    try:
        caught_up(s, primary)
    finally:
        s.close()


def test_a_torn_tail_in_the_copy_is_cut_and_the_standby_resumes(primary, tmp_path):
    # A standby killed inside a write leaves part of a frame at its copy's
    # end: the copy is its own, so it cuts that tail and asks the primary
    # for the log from the last whole frame.
    own = tmp_path / "standby"
    primary.write(30)
    s = standby(own, primary.url)
    try:
        caught_up(s, primary)
    finally:
        s.close()
    primary.write(30, 30)
    waldir = own / "wal"
    newest = sorted(n for n in os.listdir(waldir) if not n.endswith(".tmp"))[-1]
    pwal = os.path.join(primary.path, "wal")
    with open(os.path.join(pwal, newest), "rb") as f:
        theirs = f.read()
    mine = (waldir / newest).read_bytes()
    assert theirs[:len(mine)] == mine and len(theirs) > len(mine) + 8
    with open(waldir / newest, "ab") as f:
        f.write(theirs[len(mine):len(mine) + 7])  # 7 bytes of the next frame
    s = standby(own, primary.url)
    try:
        caught_up(s, primary)
        assert s.follow_error is None
    finally:
        s.close()


# ---------------------------------------------------------------- reconnect
def test_a_primary_that_moves_to_another_port_leaves_the_standby_unready(primary, tmp_path):
    primary.write(10)
    s = standby(tmp_path / "standby", primary.url, max_lag_s=0.5)
    try:
        caught_up(s, primary)
        assert s.readiness()["ready"]
        primary.restart(0)  # a new port the standby cannot know
        primary.write(10, 10)
        # Not ready once it has not heard from its primary for longer than
        # max_lag_s (plus the heartbeat interval): it cannot vouch for its lag.
        assert wait_until(lambda: not s.readiness()["ready"], 15), s.readiness()
        r = s.readiness()
        assert r["lag"]["state"] in ("catching_up", "stalled"), r
        first = r["lag"]["seconds"]
        assert first > 0.5
        assert wait_until(lambda: s.lag["seconds"] > first + 0.2, 10), s.lag
        assert s.follow_error is None  # it keeps trying (a restart on its port)
        assert s.lsn < primary.store.lsn
    finally:
        s.close()


def test_a_primary_restarting_on_the_same_port_is_reconnected_to(primary, tmp_path):
    primary.write(10)
    s = standby(tmp_path / "standby", primary.url)
    try:
        caught_up(s, primary)
        port = primary.server.port
        primary.server.close()
        primary.write(40, 10)
        primary.server = primary.store.serve_http(port, replication=True, token=TOKEN)
        caught_up(s, primary)
        assert wait_until(lambda: s.readiness()["ready"], 15), s.readiness()
        primary.write(5, 50)
        caught_up(s, primary)
    finally:
        s.close()


# ------------------------------------------------------------------ trimmed
def test_a_standby_whose_next_segment_was_trimmed_bootstraps_again(tmp_path):
    p = Served(str(tmp_path / "primary"), keep_snapshots=1)
    own = tmp_path / "standby"
    try:
        p.write(15)
        p.store.checkpoint()  # the first copy starts from a snapshot too
        p.write(5, 15)
        s = standby(own, p.url)
        try:
            caught_up(s, p)
        finally:
            s.close()
        assert len(os.listdir(own / "snapshots")) == 1
        mine, _, _ = list_segments(str(own / "wal"))
        for k in range(3):
            p.write(60, 20 + 60 * k)
            p.store.checkpoint()
        p.write(10, 500)
        hello = ReplicationClient(p.url, token=TOKEN).hello()
        assert hello["segments"][0] > mine[-1].first_lsn, "the copy's segment is gone"
        s = standby(own, p.url)
        try:
            caught_up(s, p)
            assert s.follow_error is None
            assert _manifest.read(str(own))["snapshots"] == [max(hello["snapshots"])]
            # The copy's older snapshot is dropped with the log it went with.
            assert os.listdir(own / "snapshots") == [snapshot_name(max(hello["snapshots"]))]
        finally:
            s.close()
        with Store.open(str(own), tables=KINDS, recovery="strict") as again:
            assert state(again) == state(p.store)
            assert not again.recovery_report.problems
    finally:
        p.close()


# ----------------------------------------------------------------- security
@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["no-token", "wrong-token"])
def test_a_standby_without_the_token_is_refused_and_writes_nothing(primary, tmp_path, token):
    primary.write(10)
    own = tmp_path / "standby"
    with pytest.raises(ReplicationError) as e:
        Store.open_standby(str(own), primary.url, token=token, tables=KINDS)
    assert e.value.reason == "unauthorized"
    assert "wrong-token" not in str(e.value)
    assert not own.exists() or not os.listdir(own)


def test_a_copy_of_another_store_is_refused_and_left_untouched(primary, tmp_path):
    other = Served(str(tmp_path / "other"))
    own = tmp_path / "standby"
    try:
        primary.write(10)
        other.write(10)
        s = standby(own, primary.url)
        try:
            caught_up(s, primary)
        finally:
            s.close()
        before = files_of(own)
        with pytest.raises(ReplicationError) as e:
            standby(own, other.url)
        assert e.value.reason == "foreign_store"
        assert files_of(own) == before
    finally:
        other.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to make a self-signed certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_plain_http_is_a_typed_error_and_verified_https_follows(tmp_path, certificate):
    cert, key = certificate
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    p = Store.open(str(tmp_path / "primary"), tables=KINDS, segment_bytes=4096)
    server = p.serve_http(0, replication=True, token=TOKEN, ssl_context=server_ctx)
    try:
        for i in range(20):
            write_round(p, i)
        p.sync()
        plain = tmp_path / "plain"
        t0 = time.monotonic()
        with pytest.raises(ReplicationError) as e:
            standby(plain, f"http://127.0.0.1:{server.port}")
        assert e.value.reason in ("connection", "timeout") and time.monotonic() - t0 < 20
        assert not plain.exists() or not os.listdir(plain)
        with pytest.raises(ReplicationError) as e:  # the system's CAs do not know ours
            standby(tmp_path / "unverified", f"https://127.0.0.1:{server.port}")
        assert e.value.reason == "connection"
        s = standby(tmp_path / "secure", f"https://127.0.0.1:{server.port}",
                    ssl_context=ssl.create_default_context(cafile=cert))
        try:
            assert s.wait_for_lsn(p.lsn, timeout=30)
            assert state(s) == state(p)
        finally:
            s.close()
    finally:
        server.close()
        p.close()


def test_handoff_requests_that_are_not_the_standbys_are_refused(primary):
    primary.write(5)
    c = ReplicationClient(primary.url, token=TOKEN)
    with pytest.raises(ReplicationError) as e:
        c.handoff({"store_id": "f" * 32, "request": "r1", "phase": "prepare", "hold_s": 5})
    assert e.value.reason == "foreign_store"
    with pytest.raises(ReplicationError) as e:
        c.handoff({"store_id": primary.store.store_id, "request": "never-prepared",
                   "phase": "commit"})
    assert e.value.reason == "expired"
    with pytest.raises(ReplicationError) as e:
        ReplicationClient(primary.url, token="nope").handoff(
            {"store_id": primary.store.store_id, "request": "r2", "phase": "prepare"})
    assert e.value.reason == "unauthorized"
    assert primary.store.role == "primary" and primary.store.epoch == 1
    assert primary.write(1, 5) == primary.store.lsn  # (no hold left behind)


def test_two_standbys_promoting_at_once_give_one_primary(primary, tmp_path):
    primary.write(10)
    a = standby(tmp_path / "a", primary.url)
    b = standby(tmp_path / "b", primary.url)
    results: dict = {}
    try:
        caught_up(a, primary)
        caught_up(b, primary)
        go = threading.Barrier(2)

        def promote(name, s):
            go.wait()
            try:
                results[name] = s.promote(timeout_s=10, hold_s=3)
            except HandoffError as e:
                results[name] = e

        threads = [threading.Thread(target=promote, args=(n, s)) for n, s in
                   (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        won = [n for n, r in results.items() if isinstance(r, dict)]
        assert len(won) == 1, results
        winner, loser = (a, b) if won == ["a"] else (b, a)
        assert winner.role == "primary" and winner.epoch == 2
        assert loser.role == "standby"
        assert primary.store.role == "moved"
        assert winner.put("kv", "after", 1) == primary.store.lsn + 1
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ handoff
def test_a_handoff_under_load_loses_no_acknowledged_write_and_halves_no_batch(
        primary, tmp_path):
    primary.write(10)
    s = standby(tmp_path / "standby", primary.url)
    acked: list[int] = []
    refused: list[BaseException] = []
    other: list[BaseException] = []
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            try:
                with primary.store.batch() as b:
                    b.put("kv", f"a{i}", i)
                    b.put("d", f"b{i}", i)
                acked.append(i)
            except MovedError as e:
                refused.append(e)
                return
            except BaseException as e:
                other.append(e)
                return
            i += 1

    t = threading.Thread(target=writer)
    try:
        caught_up(s, primary)
        t.start()
        assert wait_until(lambda: len(acked) >= 50, 30)
        result = s.promote(timeout_s=10, hold_s=5, address="http://new-primary:9")
        t.join(30)
        assert not other, other
        assert refused and all(e.address == "http://new-primary:9" for e in refused)
        assert result["role"] == "primary" and s.role == "primary" and s.epoch == 2
        p = primary.store
        assert p.role == "moved"
        r = p.readiness()
        assert not r["ready"] and r.get("role") == "moved", r
        kv, d = s.table("kv"), s.table("d")
        for i in acked:
            assert kv[f"a{i}"] == i and d[f"b{i}"] == i
        halves = {k[1:] for k in kv.keys() if k.startswith("a")} ^ \
            {k[1:] for k in d.keys() if k.startswith("b")}
        assert not halves, "a batch is applied whole or not at all"
        assert s.lsn == p.lsn, "the new primary holds exactly the old one's log"
        with pytest.raises(MovedError) as e:
            p.put("kv", "late", 1)
        assert e.value.address == "http://new-primary:9"
        assert s.put("kv", "after", 1) == p.lsn + 1
    finally:
        stop.set()
        t.join()
        s.close()
    with Store.open(str(tmp_path / "standby"), tables=KINDS, recovery="strict") as again:
        assert again.epoch == 2 and again.table("kv")["after"] == 1


def test_a_hold_that_is_never_committed_expires_and_writes_resume(primary):
    primary.write(5)
    p = primary.store
    c = ReplicationClient(primary.url, token=TOKEN)
    body = {"store_id": p.store_id, "request": "held-1", "hold_s": 0.5}
    prepared = c.handoff(dict(body, phase="prepare"))
    assert prepared["final_lsn"] == p.lsn
    t0 = time.monotonic()
    lsn = p.put("kv", "during-hold", 1)  # waits out the hold, then goes on
    assert time.monotonic() - t0 >= 0.3
    assert lsn == prepared["final_lsn"] + 1 and p.role == "primary"
    with pytest.raises(ReplicationError) as e:
        c.handoff(dict(body, phase="commit"))
    assert e.value.reason == "expired"
    assert p.role == "primary" and p.epoch == 1 and _manifest.read(p.path).get("epoch", 1) == 1
    assert p.put("kv", "after", 1) == lsn + 1


def test_a_batch_begun_during_a_hold_waits_it_out(primary):
    # (Batch.__enter__ checked writability outside the store's lock, and a
    # hold is waited out on a Condition of that lock: RuntimeError.)
    primary.write(3)
    p = primary.store
    c = ReplicationClient(primary.url, token=TOKEN)
    body = {"store_id": p.store_id, "request": "held-2", "hold_s": 0.3}
    prepared = c.handoff(dict(body, phase="prepare"))
    with p.batch() as b:
        b.put("kv", "x", 1)
        b.put("d", "y", 2)
    assert b.lsn == prepared["final_lsn"] + 2 and p.role == "primary"


# ------------------------------------------------------------------- faults
def test_a_standby_ahead_of_its_primary_is_refused_and_untouched(tmp_path):
    ppath, older = str(tmp_path / "primary"), str(tmp_path / "older")
    own = tmp_path / "standby"
    p = Served(ppath)
    try:
        p.write(20)
    finally:
        p.close()
    shutil.copytree(ppath, older)
    p = Served(ppath)
    try:
        s = standby(own, p.url)
        try:
            p.write(20, 20)
            caught_up(s, p)
        finally:
            s.close()
    finally:
        p.close()
    shutil.rmtree(ppath)
    shutil.copytree(older, ppath)  # the primary restored from an older copy
    p = Served(ppath)
    try:
        before = files_of(own)
        with pytest.raises(ReplicationError) as e:
            standby(own, p.url)
        assert e.value.reason == "ahead"
        assert files_of(own) == before
    finally:
        p.close()


def test_a_corrupt_frame_the_primary_serves_fails_the_standby_visibly(primary, tmp_path):
    own = tmp_path / "standby"
    primary.write(10)
    s = standby(own, primary.url)
    try:
        caught_up(s, primary)
    finally:
        s.close()
    have = s.lsn
    primary.write(120, 10)  # several more segments (4 KiB each)
    pwal = os.path.join(primary.path, "wal")
    segs = sorted(os.listdir(pwal))
    assert len(segs) >= 3
    # A complete segment the standby has not seen (the writer is past it).
    victim = segs[-2]
    path = os.path.join(pwal, victim)
    with open(path, "r+b") as f:
        data = f.read()
        flip = len(data) - 3  # inside the last frame's payload
        f.seek(flip)
        f.write(bytes([data[flip] ^ 0x40]))
    s = standby(own, primary.url)
    try:
        assert wait_until(lambda: s.follow_error is not None, 30), s.lag
        assert isinstance(s.follow_error, ReplicationError)
        assert s.follow_error.reason == "bad_frame"
        r = s.readiness()
        assert not r["ready"] and r["lag"]["state"] == "failed" and "error" in r
        assert have <= s.lsn < primary.store.lsn
        copy = own / "wal" / victim
        if copy.exists():
            mine = copy.read_bytes()
            assert len(mine) <= flip and data[:len(mine)] == mine
        with pytest.raises(HandoffError):
            s.promote(timeout_s=2, hold_s=1)
        assert primary.store.role == "primary"
    finally:
        s.close()


def test_a_killed_primary_leaves_the_standby_its_state_and_promote_refuses(tmp_path, core_env):
    ppath, own = str(tmp_path / "primary"), tmp_path / "standby"
    proc, lines = spawn(core_env, "primary", ppath, TOKEN, "40")
    try:
        port = int(lines.wait(lambda line: line.startswith("port ")).split()[1])
        last = int(lines.wait(lambda line: line.startswith("wrote ")).split()[1])
        s = standby(own, f"http://127.0.0.1:{port}", max_lag_s=0.5)
        try:
            assert s.wait_for_lsn(last, timeout=30)
            want = state(s)
            kill9(proc)
            assert wait_until(lambda: not s.readiness()["ready"], 15), s.readiness()
            assert s.lsn == last and state(s) == want
            first = s.lag["seconds"]
            assert wait_until(lambda: s.lag["seconds"] > first + 0.2, 10)
            with pytest.raises(HandoffError) as e:
                s.promote(timeout_s=2, hold_s=1)
            assert e.value.reason == "primary_unreachable"
            assert s.role == "standby" and state(s) == want
            # force=True: the copy becomes the primary's log at epoch + 1,
            # and the result says what that may have cost.
            result = s.promote(timeout_s=2, hold_s=1, force=True)
            assert result["failover"] and result["may_have_lost_writes"]
            assert s.role == "primary" and s.epoch == 2 and state(s) == want
            assert s.put("kv", "after", 1) == last + 1
        finally:
            s.close()
    finally:
        kill9(proc)
    with Store.open(str(own), tables=KINDS, recovery="strict") as again:
        assert again.lsn == last + 1 and again.epoch == 2
        assert _manifest.read(str(own))["handoff"]["failover"] is True
        assert not again.recovery_report.problems
