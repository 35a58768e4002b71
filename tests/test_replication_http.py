"""The replication endpoints over real HTTP on 127.0.0.1 (docs/replication.md):
auth, the protocol header, snapshots, the log stream into a Mirror
(byte-identical, across segments, with writes going on), trimming, TLS,
and a primary that disappears mid-message."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

from rehydrate import ConfigError, ReplicationError, Store, observe
from rehydrate.replication_client import Mirror, ReplicationClient, follow
from rehydrate.snapshot import snapshot_name

from helpers.replication import STORE_ID, TOKEN, Primary, serving, wait_until, wal_files

HEADERS = {"X-Rehydrate-Protocol": "1", "Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def primary(tmp_path):
    p = Primary(str(tmp_path / "primary"), segment_bytes=4096)
    yield p
    p.close()


def fill(store, n: int, start: int = 0, sync_every: int = 10) -> None:
    for i in range(start, start + n):
        # hex digits: LZ4 finds little to squeeze, so segments fill
        store.put("t", i, f"value-{i}-" + hashlib.sha256(str(i).encode()).hexdigest())
        if i % sync_every == 0:
            store.sync()
    store.sync()


def raw_get(port: int, path: str, headers: dict) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        ctype = resp.getheader("Content-Type")
        body = resp.read(65536) if ctype == "application/json" else resp.read(64)
        return resp.status, ctype, body
    finally:
        conn.close()


def client(server, **kw) -> ReplicationClient:
    kw.setdefault("token", TOKEN)
    return ReplicationClient(f"http://127.0.0.1:{server.port}", **kw)


def follow_in_thread(c, mirror, stop, out, **kw):
    def run():
        try:
            out["result"] = follow(c, mirror, STORE_ID, on_data=lambda s, n: None,
                                   on_heartbeat=out.setdefault("beats", []).append,
                                   stop=stop, **kw)
        except BaseException as e:  # the test asserts on it
            out["error"] = e

    t = threading.Thread(target=run, name="test-follow")
    t.start()
    return t


# -- auth and protocol -----------------------------------------------------------

LOG = f"/replication/v1/log?store_id={STORE_ID}&segment=1&offset=0"
AUTH_CASES = {
    "no_token": ({"X-Rehydrate-Protocol": "1"}, LOG, 401, "unauthorized"),
    "wrong_token": ({"X-Rehydrate-Protocol": "1", "Authorization": "Bearer nope"}, LOG, 401,
                    "unauthorized"),
    "not_bearer": ({"X-Rehydrate-Protocol": "1", "Authorization": f"Basic {TOKEN}"}, LOG, 401,
                   "unauthorized"),
    "wrong_store_id": (HEADERS, LOG.replace(STORE_ID, "f" * 32), 409, "foreign_store"),
    "protocol_2": ({**HEADERS, "X-Rehydrate-Protocol": "2"}, LOG, 400, "protocol"),
    "no_protocol": ({"Authorization": f"Bearer {TOKEN}"}, LOG, 400, "protocol"),
    "no_token_protocol_2": ({"X-Rehydrate-Protocol": "2"}, LOG, 401, "unauthorized"),
    "hello_no_token": ({"X-Rehydrate-Protocol": "1"}, "/replication/v1/hello", 401,
                       "unauthorized"),
    "snapshot_no_token": ({"X-Rehydrate-Protocol": "1"}, "/replication/v1/snapshots/1/META",
                          401, "unauthorized"),
}


@pytest.mark.parametrize("case", sorted(AUTH_CASES))
def test_auth_and_protocol_refusals_give_no_state(primary, case):
    headers, path, status, reason = AUTH_CASES[case]
    fill(primary.store, 5)
    with serving(primary) as server:
        code, ctype, body = raw_get(server.port, path, headers)
    assert (code, ctype) == (status, "application/json")
    data = json.loads(body)
    assert data["error"] == reason
    assert set(data) <= {"error", "detail", "supported"}
    if reason == "protocol":
        assert data["supported"] == [1]
    # Not one byte of state, nor the token.
    assert b"RHWALSEG" not in body and b"value-" not in body and TOKEN.encode() not in body
    if status == 401:
        assert STORE_ID.encode() not in body


def test_the_client_maps_refusals_to_typed_errors(primary):
    with serving(primary) as server:
        for kw, reason in (({"token": "wrong"}, "unauthorized"),
                           ({"token": None}, "unauthorized")):
            with pytest.raises(ReplicationError) as e:
                client(server, **kw).hello()
            assert e.value.reason == reason
            assert e.value.peer == f"http://127.0.0.1:{server.port}"
            assert TOKEN not in str(e.value) and "wrong" not in str(e.value)
        c = client(server)
        with pytest.raises(ReplicationError) as e:
            next(c.stream_log("f" * 32, 1, 0))
        assert e.value.reason == "foreign_store"
        with pytest.raises(ReplicationError) as e:
            c.handoff({"store_id": "f" * 32, "request": "r1", "phase": "prepare"})
        assert e.value.reason == "foreign_store"
        assert c.handoff({"store_id": STORE_ID, "request": "r1", "phase": "prepare",
                          "hold_s": 2.0}) == {"final_lsn": 0, "epoch": 1}
        assert primary.handoffs == [{"store_id": STORE_ID, "request": "r1",
                                     "phase": "prepare", "hold_s": 2.0}]
    assert TOKEN not in repr(c)


def test_hello_says_the_protocol_and_where_segments_start(primary):
    fill(primary.store, 100)
    with serving(primary) as server:
        hello = client(server).hello()
    assert hello["protocol"] == 1 and hello["format"] == 2
    assert hello["store_id"] == STORE_ID and hello["lsn"] == 100
    assert hello["segments"] == sorted(int(n.split(".")[0]) for n in wal_files(primary.path))
    assert len(hello["segments"]) > 1


def test_replication_without_a_token_or_client_certificates_is_a_config_error(primary):
    with pytest.raises(ConfigError):
        primary.store.serve_http(replication=True)
    with pytest.raises(ConfigError):
        observe.ReadinessServer(primary.store, "127.0.0.1", 0, None,
                                replication=(primary.source, None))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # verifies no client
    with pytest.raises(ConfigError):
        primary.store.serve_http(replication=True, ssl_context=ctx)
    for bad in ("", "two words", "t\u00e9"):
        with pytest.raises(ConfigError):
            primary.store.serve_http(replication=True, token=bad)
    with pytest.raises(ConfigError):
        primary.store.serve_http(token=TOKEN)  # a token without replication
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = primary.store.serve_http(replication=True, ssl_context=ctx)
    server.close()
    server = primary.store.serve_http(replication=True, token=TOKEN)
    server.close()


# -- snapshots -------------------------------------------------------------------


def test_a_checkpoint_downloads_byte_for_byte(primary, tmp_path):
    fill(primary.store, 50)
    lsn = primary.store.checkpoint()["lsn"]
    src = os.path.join(primary.path, "snapshots", snapshot_name(lsn))
    dest = str(tmp_path / "standby")
    with serving(primary) as server:
        c = client(server)
        assert lsn in c.hello()["snapshots"]
        files = c.snapshot_files(lsn)
        assert {f["name"] for f in files} == set(os.listdir(src))
        got = c.download_snapshot(lsn, dest)
    assert got == os.path.join(dest, "snapshots", snapshot_name(lsn))
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as a, open(os.path.join(got, name), "rb") as b:
            assert a.read() == b.read(), name
    assert sorted(os.listdir(os.path.join(dest, "snapshots"))) == [snapshot_name(lsn)]


TRAVERSALS = ["../../MANIFEST", "..%2F..%2FMANIFEST", "%2E%2E", "..", ".", "%2Fetc%2Fpasswd",
              "META%00", "META%2F", "%00", "", "..%5CMANIFEST", "%FF", "META/x", ".hidden"]


@pytest.mark.parametrize("name", TRAVERSALS, ids=lambda n: f"n_{n}")
def test_snapshot_file_names_outside_the_listing_are_refused(primary, tmp_path, name):
    fill(primary.store, 20)
    lsn = primary.store.checkpoint()["lsn"]
    with open(os.path.join(primary.path, "MANIFEST"), "rb") as f:
        manifest_bytes = f.read()
    with serving(primary) as server:
        code, ctype, body = raw_get(server.port, f"/replication/v1/snapshots/{lsn}/{name}",
                                    HEADERS)
        assert code == 404 and ctype == "application/json"
        assert manifest_bytes[:16] not in body and b"RHSNAPM1" not in body
        for path in (f"/replication/v1/snapshots/{lsn + 1}",
                     f"/replication/v1/snapshots/{lsn + 1}/META",
                     "/replication/v1/snapshots/..%2F",
                     f"/replication/v1/snapshots/-{lsn}"):
            assert raw_get(server.port, path, HEADERS)[0] == 404, path


# -- the log stream --------------------------------------------------------------


def test_the_log_streams_into_a_mirror_byte_for_byte_while_writes_go_on(primary, tmp_path):
    fill(primary.store, 30)
    mirror = Mirror(str(tmp_path / "standby"))
    stop, out = threading.Event(), {}
    writer_done = threading.Event()

    def write():
        try:
            fill(primary.store, 400, start=30, sync_every=7)
        finally:
            writer_done.set()

    with serving(primary) as server:
        t = follow_in_thread(client(server), mirror, stop, out)
        w = threading.Thread(target=write, name="test-writer")
        w.start()
        w.join()
        theirs = wal_files(primary.path)
        newest = max(theirs)
        try:
            assert wait_until(lambda: mirror.position() == (int(newest.split(".")[0]),
                                                            len(theirs[newest]))
                              or "error" in out)
        finally:
            stop.set()
            t.join()
    mirror.close()
    assert "error" not in out, out.get("error")
    assert out["result"] == "stopped"
    assert len(theirs) >= 5
    assert wal_files(str(tmp_path / "standby")) == theirs
    beat = out["beats"][0]
    assert set(beat) == {"lsn", "durable_lsn", "time", "epoch"}


def test_a_moved_primary_ends_the_stream_after_its_last_frame(primary, tmp_path):
    fill(primary.store, 120)
    primary.role = "moved"
    mirror = Mirror(str(tmp_path / "standby"))
    with serving(primary) as server:
        result = follow(client(server), mirror, STORE_ID, on_data=lambda s, n: None,
                        on_heartbeat=lambda d: None, stop=threading.Event())
    mirror.close()
    assert result == "moved"
    assert wal_files(str(tmp_path / "standby")) == wal_files(primary.path)


def test_a_stream_resumes_where_the_copy_ends(primary, tmp_path):
    fill(primary.store, 60)
    mirror = Mirror(str(tmp_path / "standby"))
    primary.role = "moved"
    with serving(primary) as server:
        c = client(server)
        segments = c.hello()["segments"]
        # Only the first segment's header, then follow from there.
        for msg in c.stream_log(STORE_ID, segments[0], 0):
            if msg.kind == 1:
                mirror.write(msg.segment, 0, msg.body[:32])
                break
        assert mirror.position() == (segments[0], 32)
        assert follow(c, mirror, STORE_ID, on_data=lambda s, n: None,
                      on_heartbeat=lambda d: None, stop=threading.Event()) == "moved"
    mirror.close()
    assert wal_files(str(tmp_path / "standby")) == wal_files(primary.path)


def test_a_trimmed_segment_is_410_and_follow_raises_trimmed(primary, tmp_path):
    fill(primary.store, 150)
    first = min(int(n.split(".")[0]) for n in wal_files(primary.path))
    primary.store.checkpoint()
    assert first not in [int(n.split(".")[0]) for n in wal_files(primary.path)]
    with serving(primary) as server:
        path = f"/replication/v1/log?store_id={STORE_ID}&segment={first}&offset=0"
        code, _, body = raw_get(server.port, path, HEADERS)
        assert code == 410 and json.loads(body)["error"] == "trimmed"
        mirror = Mirror(str(tmp_path / "standby"))
        with pytest.raises(ReplicationError) as e:
            follow(client(server), mirror, STORE_ID, on_data=lambda s, n: None,
                   on_heartbeat=lambda d: None, stop=threading.Event(), start=(first, 0))
        assert e.value.reason == "trimmed"
        mirror.close()


def test_offsets_past_the_end_and_segments_past_the_log_are_ahead(primary):
    fill(primary.store, 20)
    (name, data), = wal_files(primary.path).items()
    seg = int(name.split(".")[0])
    with serving(primary) as server:
        for segment, offset, reason in ((seg, len(data) + 1, "ahead"),
                                        (seg + 10_000, 0, "ahead"),
                                        (seg, 33, "bad_offset"),
                                        (seg, 5, "bad_offset")):
            path = f"/replication/v1/log?store_id={STORE_ID}&segment={segment}&offset={offset}"
            code, _, body = raw_get(server.port, path, HEADERS)
            assert (code, json.loads(body)["error"]) == (409, reason)
        for query in ("segment=1&offset=0", f"store_id={STORE_ID}&segment=x&offset=0",
                      f"store_id={STORE_ID}&segment=1&offset=-1"):
            assert raw_get(server.port, f"/replication/v1/log?{query}", HEADERS)[0] == 400


def test_a_primary_that_disappears_mid_message_is_truncated(tmp_path):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    from rehydrate.replication import HEARTBEAT, encode_control

    half = encode_control(HEARTBEAT, {"lsn": 1, "durable_lsn": 1, "time": 0, "epoch": 1})
    half = half[:len(half) // 2]

    def serve_once():
        conn, _ = listener.accept()
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + half)

    t = threading.Thread(target=serve_once, name="test-half-primary")
    t.start()
    try:
        c = ReplicationClient(f"http://127.0.0.1:{listener.getsockname()[1]}", token=TOKEN)
        with pytest.raises(ReplicationError) as e:
            list(c.stream_log(STORE_ID, 1, 0))
        assert e.value.reason == "truncated"
    finally:
        t.join()
        listener.close()


def test_a_dead_port_is_a_connection_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ReplicationError) as e:
        ReplicationClient(f"http://127.0.0.1:{port}", token=TOKEN).hello()
    assert e.value.reason == "connection"


# -- TLS -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to make a self-signed certificate (cryptography is "
                    "not installed either)")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_plain_http_gets_a_typed_error_and_https_works(primary, certificate):
    cert, key = certificate
    fill(primary.store, 10)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    with serving(primary, ssl_context=server_ctx) as server:
        plain = ReplicationClient(f"http://127.0.0.1:{server.port}", token=TOKEN,
                                  timeout_s=5.0)
        with pytest.raises(ReplicationError) as e:
            plain.hello()
        assert e.value.reason in ("connection", "timeout")
        unverified = ReplicationClient(f"https://127.0.0.1:{server.port}", token=TOKEN,
                                       timeout_s=5.0)  # the system's CAs: not ours
        with pytest.raises(ReplicationError) as e:
            unverified.hello()
        assert e.value.reason == "connection"
        secure = ReplicationClient(f"https://127.0.0.1:{server.port}", token=TOKEN,
                                   ssl_context=client_ctx)
        assert secure.hello()["lsn"] == 10
        with pytest.raises(ReplicationError) as e:
            ReplicationClient(f"https://127.0.0.1:{server.port}", token="wrong",
                              ssl_context=client_ctx).hello()
        assert e.value.reason == "unauthorized"


def test_a_silent_primary_is_a_timeout(tmp_path):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    done = threading.Event()

    def serve_silently():
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            done.wait(30)  # sends nothing more until the test is over

    t = threading.Thread(target=serve_silently, name="test-silent-primary")
    t.start()
    try:
        c = ReplicationClient(f"http://127.0.0.1:{listener.getsockname()[1]}", token=TOKEN,
                              timeout_s=0.3)
        with pytest.raises(ReplicationError) as e:
            list(c.stream_log(STORE_ID, 1, 0))
        assert e.value.reason == "timeout"
    finally:
        done.set()
        t.join()
        listener.close()


def test_closing_the_server_ends_its_streams_with_shutdown(primary):
    fill(primary.store, 20)
    server = observe.ReadinessServer(primary.store, "127.0.0.1", 0, None,
                                     replication=(primary.source, TOKEN))
    try:
        c = client(server)
        stream = c.stream_log(STORE_ID, c.hello()["segments"][0], 0)
        first = next(stream)
    finally:
        server.close()  # returns once its streams ended
    rest = list(stream)
    from rehydrate.replication import END, decode_control

    assert first.kind in (1, 2)
    assert rest[-1].kind == END and decode_control(rest[-1])["reason"] == "shutdown"


def test_a_stream_behind_a_trim_ends_trimmed(primary):
    """A stream still on an old segment when a checkpoint unlinks the
    segments after it cannot go on without a gap: it sends what its open
    segment holds, then END "trimmed" (never a jump over the gap)."""
    import io

    from rehydrate.replication import BYTES, END, LogStream, decode_control, read_message

    fill(primary.store, 150)
    before = wal_files(primary.path)
    assert len(before) >= 3
    first = min(before)
    sent, closing = [], threading.Event()
    first_sent, go_on = threading.Event(), threading.Event()

    def write(data: bytes) -> None:
        sent.append(data)
        first_sent.set()
        go_on.wait(30)  # hold the stream on the first segment until the trim

    fd = os.open(os.path.join(primary.path, "wal", first), os.O_RDONLY)
    try:
        stream = LogStream(primary.source, fd, int(first.split(".")[0]), 0, write, closing)
        runner = threading.Thread(target=stream.run)
        runner.start()
        assert first_sent.wait(30)
        primary.store.checkpoint()  # unlinks every sealed segment
        assert not set(sorted(before)[:-1]) & set(wal_files(primary.path))
        go_on.set()
        runner.join(30)
        assert not runner.is_alive()
    finally:
        closing.set()
        os.close(fd)
    buf = io.BytesIO(b"".join(sent))
    msgs = []
    while buf.tell() < len(buf.getvalue()):
        msgs.append(read_message(buf.read))
    data = [m for m in msgs if m.kind == BYTES]
    assert {m.segment for m in data} == {int(first.split(".")[0])}
    assert b"".join(m.body for m in data) == before[first]
    assert msgs[-1].kind == END and decode_control(msgs[-1])["reason"] == "trimmed"


def test_a_stream_in_flight_survives_a_checkpoint_that_trims_the_log(primary, tmp_path):
    fill(primary.store, 150)
    before = wal_files(primary.path)
    first = int(min(before).split(".")[0])
    mirror = Mirror(str(tmp_path / "standby"))
    assert len(before) >= 3
    last = sorted(before)[-2]  # the newest sealed segment
    with serving(primary) as server:
        stream = client(server).stream_log(STORE_ID, first, 0)
        # Take in every sealed segment: the stream is then on the last of them
        # (which the checkpoint unlinks under it) or already on the live one.
        # (A stream further behind rightly ends "trimmed" once the segment
        # after it is unlinked: test_a_stream_behind_a_trim_ends_trimmed.)
        for msg in stream:
            if msg.kind == 1:
                mirror.write(msg.segment, msg.offset, msg.body)
            if mirror.position() == (int(last.split(".")[0]), len(before[last])):
                break
        primary.store.checkpoint()  # unlinks every sealed segment
        assert not set(sorted(before)[:-1]) & set(wal_files(primary.path))
        fill(primary.store, 100, start=150)
        after = wal_files(primary.path)
        newest = max(after)
        for msg in stream:
            if msg.kind == 1:
                mirror.write(msg.segment, msg.offset, msg.body)
            if mirror.position() == (int(newest.split(".")[0]), len(after[newest])):
                break
        stream.close()
    mirror.close()
    assert wal_files(str(tmp_path / "standby")) == {**before, **after}
