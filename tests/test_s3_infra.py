"""The S3 test infrastructure itself: moto's server on 127.0.0.1 reached
through pyarrow.fs.S3FileSystem (directly and through the FaultProxy), each
fault as pyarrow observes it, and the proxy's counters.

What pyarrow 26 (AWS SDK for C++ 1.11) does with each fault, as these tests
pin down (tests/helpers/s3_server.py's docstring has the rest):

* 500 InternalError and 503 SlowDown are retryable. An ``S3FileSystem``
  built in Python tries 3 times in all (AwsStandardS3RetryStrategy, jittered
  backoff: a persistent 5xx costs about 0.5-3 s), so one injected 5xx is
  invisible to the caller. A filesystem from ``FileSystem.from_uri`` retries
  every 200 ms for 6 s (about 30 tries) before raising. Except on a read
  smaller than the error's XML body: not retried at all.
* A dropped connection (reset, no response) is a NETWORK_CONNECTION error,
  retried the same way. curl itself resends a request once when a kept-alive
  connection dies before any answer, so one drop on a reused connection may
  be logged twice while the SDK counts one attempt.
* A cut upload (headers and half the body, then the connection closed) never
  creates the object: moto answers the truncated request 400 and keeps
  nothing, the client sees a reset and retries the PUT or the part.
* A slow answer beyond the request timeout (SDK default 3 s; settable with
  ``request_timeout=`` also on Linux, through curl's low-speed limit) is a
  NETWORK_CONNECTION error ("Timeout was reached"), retried.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time

import pyarrow.fs as pafs
import pytest

from helpers import s3_server as s3mod
from helpers.s3_faults import FaultProxy, request_kind
from helpers.s3_server import start_s3_server


@pytest.fixture(autouse=True)
def core():
    """Nothing here touches either core: run each test once, not per core."""
    yield None


def data(n: int, seed: int = 0) -> bytes:
    """n deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:n])


def put(fs: pafs.FileSystem, path: str, payload: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(payload)


def get(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def fresh_fs(proxy: FaultProxy, **kwargs: object) -> pafs.S3FileSystem:
    """A filesystem with no connection open yet, through the proxy."""
    options: dict[str, object] = dict(
        access_key=s3mod.ACCESS_KEY, secret_key=s3mod.SECRET_KEY, region=s3mod.REGION,
        scheme="http", endpoint_override=proxy.endpoint)
    options.update(kwargs)
    return pafs.S3FileSystem(**options)


def one_try() -> pafs.S3RetryStrategy:
    return pafs.AwsStandardS3RetryStrategy(max_attempts=1)


# moto answers a request without an Authorization header as an anonymous
# one (403 on a private bucket); it does not check signatures.
AUTH = {"Authorization": f"AWS4-HMAC-SHA256 Credential={s3mod.ACCESS_KEY}/20260101/us-east-1/s3/"
                         "aws4_request, SignedHeaders=host, Signature=00"}
# Larger than the proxy's XML error body: see test_5xx_on_a_small_read_is_not_retried.
OBJ = data(4096, seed=9)


def statuses(proxy: FaultProxy, kind: str, contains: str = "") -> list[int | None]:
    return [status for k, target, status in proxy.log if k == kind and contains in target]


# -- the server and its URIs ----------------------------------------------------


def test_server_environment_and_uri(s3_server, s3_bucket):
    assert s3_server.running()
    assert s3_server.endpoint == f"127.0.0.1:{s3_server.port}"
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
    assert os.environ["AWS_ACCESS_KEY_ID"] == s3mod.ACCESS_KEY

    uri = s3_server.uri(s3_bucket, "archive/segments/")
    assert uri == (f"s3://{s3_bucket}/archive/segments?endpoint_override={s3_server.endpoint}"
                   "&scheme=http&region=us-east-1")
    fs, path = pafs.FileSystem.from_uri(uri)
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == f"{s3_bucket}/archive/segments"
    assert fs.get_file_info(s3_bucket).type == pafs.FileType.Directory
    assert fs.get_file_info(pafs.FileSelector(s3_bucket, recursive=True)) == []

    assert s3_server.uri(s3_bucket, "", endpoint="127.0.0.1:1").startswith(
        f"s3://{s3_bucket}?endpoint_override=127.0.0.1:1&")
    # from_uri takes no retry or timeout parameter
    with pytest.raises(ValueError, match="Unexpected query parameter"):
        pafs.FileSystem.from_uri(uri + "&connect_timeout=1")


@pytest.mark.parametrize("via", ["direct", "proxy"])
def test_put_get_range_list_delete(s3_server, s3_bucket, via, request):
    endpoint = None
    proxy: FaultProxy | None = None
    if via == "proxy":
        proxy = request.getfixturevalue("fault_proxy")
        endpoint = proxy.endpoint
    # as library code would: a filesystem from a URI
    fs, root = pafs.FileSystem.from_uri(s3_server.uri(s3_bucket, "run", endpoint=endpoint))

    small = data(5000, seed=1)
    big = data(25 * 1024 * 1024 + 12345, seed=2)  # three parts of a multipart upload
    put(fs, f"{root}/a/small.bin", small)
    put(fs, f"{root}/b/big.bin", big)

    assert get(fs, f"{root}/a/small.bin") == small
    assert hashlib.sha256(get(fs, f"{root}/b/big.bin")).digest() == hashlib.sha256(big).digest()
    with fs.open_input_file(f"{root}/b/big.bin") as f:
        assert f.size() == len(big)
        assert f.read_at(100, 21 * 1024 * 1024) == big[21 * 1024 * 1024:21 * 1024 * 1024 + 100]
        assert f.read_at(10, len(big) - 10) == big[-10:]

    files = {i.path: i.size for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
             if i.type == pafs.FileType.File}
    assert files == {f"{root}/a/small.bin": len(small), f"{root}/b/big.bin": len(big)}

    fs.delete_file(f"{root}/a/small.bin")
    assert fs.get_file_info(f"{root}/a/small.bin").type == pafs.FileType.NotFound
    fs.delete_dir(f"{root}/b")
    assert [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if i.type == pafs.FileType.File] == []

    if proxy is not None:
        assert proxy.requests["POST"] >= 4  # two multipart uploads: create + complete
        assert proxy.requests["PUT"] >= 4  # their parts (1 + 3)
        assert proxy.requests["GET"] >= 3  # ranged reads
        assert proxy.requests["LIST"] >= 2
        assert proxy.requests["DELETE"] + proxy.requests["POST"] >= 6  # DeleteObjects is a POST
        assert all(status is not None and status < 500 for _, _, status in proxy.log)
        assert 206 in statuses(proxy, "GET", "big.bin")


def test_proxy_bodies_keepalive_and_ranges(s3_server, s3_bucket, fault_proxy):
    """The proxy on its own: Content-Length and chunked bodies (with Expect:
    100-continue), range GETs and HEAD on one kept-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", fault_proxy.port, timeout=10)
    payload = data(3 * 1024 * 1024 + 7, seed=3)

    conn.request("PUT", f"/{s3_bucket}/plain", body=payload, headers=AUTH)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200
    sock = conn.sock

    def chunks():
        for off in range(0, len(payload), 1 << 20):
            yield payload[off:off + (1 << 20)]

    conn.request("PUT", f"/{s3_bucket}/chunked", body=chunks(), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked", "Expect": "100-continue", **AUTH})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200

    conn.request("GET", f"/{s3_bucket}/chunked", headers={"Range": "bytes=1048570-1048589", **AUTH})
    resp = conn.getresponse()
    assert resp.status == 206
    assert resp.read() == payload[1048570:1048590]

    conn.request("HEAD", f"/{s3_bucket}/plain", headers=AUTH)
    resp = conn.getresponse()
    assert resp.read() == b""
    assert resp.status == 200 and int(resp.getheader("Content-Length")) == len(payload)

    conn.request("GET", f"/{s3_bucket}/plain", headers=AUTH)
    resp = conn.getresponse()
    assert resp.read() == payload
    assert conn.sock is sock  # the same connection throughout
    conn.close()

    assert get(s3_server.filesystem(), f"{s3_bucket}/chunked") == payload
    assert [(k, s) for k, _, s in fault_proxy.log] == [
        ("PUT", 200), ("PUT", 200), ("GET", 206), ("HEAD", 200), ("GET", 200)]


def test_request_kind():
    assert request_kind("get", "/bkt/key") == "GET"
    assert request_kind("GET", "/bkt?list-type=2&prefix=a%2F") == "LIST"
    assert request_kind("GET", "/bkt?delimiter=%2F&prefix=") == "LIST"
    assert request_kind("GET", "/bkt") == "LIST"
    assert request_kind("GET", "/") == "GET"  # ListBuckets
    assert request_kind("GET", "/bkt?location") == "GET"
    assert request_kind("PUT", "/bkt/k?partNumber=1&uploadId=x") == "PUT"
    assert request_kind("POST", "/bkt/k?uploads") == "POST"


def test_counters_count_each_request(s3_server, s3_bucket, fault_proxy):
    # allow_delayed_open: a small object is one PutObject, not a multipart upload
    fs = fresh_fs(fault_proxy, allow_delayed_open=True)
    put(fs, f"{s3_bucket}/k1", b"one")
    assert dict(fault_proxy.requests) == {"PUT": 1}
    fault_proxy.reset_counts()

    assert fs.get_file_info(f"{s3_bucket}/k1").size == 3
    assert dict(fault_proxy.requests) == {"HEAD": 1}
    fault_proxy.reset_counts()

    assert [i.path for i in fs.get_file_info(pafs.FileSelector(s3_bucket))] == [f"{s3_bucket}/k1"]
    assert dict(fault_proxy.requests) == {"LIST": 1}
    assert fault_proxy.log[0][0] == "LIST" and "list-type=2" in fault_proxy.log[0][1]
    fault_proxy.reset_counts()

    fs.delete_file(f"{s3_bucket}/k1")
    assert fault_proxy.requests["DELETE"] == 1
    assert ("DELETE", f"/{s3_bucket}/k1", 204) in fault_proxy.log
    assert fault_proxy.count(lambda kind, target, status: kind == "DELETE") == 1


# -- faults ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_once_is_retried_by_pyarrow(s3_server, s3_bucket, fault_proxy, status):
    put(s3_server.filesystem(), f"{s3_bucket}/obj", OBJ)
    fault_proxy.fail(status, method="GET", path_contains="/obj", times=1)
    # pyarrow's default: 3 attempts in all
    assert get(fresh_fs(fault_proxy), f"{s3_bucket}/obj") == OBJ
    assert statuses(fault_proxy, "GET", "/obj") == [status, 206]


# The error class pyarrow reports for a GET: from the status, or from the XML
# body's code where the SDK parsed it. A GET's body lands in pyarrow's read
# buffer, whose bytes past the body are whatever was there, so whether the
# parse succeeds is not to be relied on (a LIST's is: see below).
GET_ERRORS = {500: "INTERNAL_FAILURE", 503: "SLOW_DOWN|SERVICE_UNAVAILABLE"}


# (503 with 3 attempts is left out: the SDK's backoff for a throttling error
# is longer, up to ~3 s for the two waits)
@pytest.mark.parametrize("status, attempts", [(500, 1), (503, 1), (500, 3)])
def test_5xx_persistent_is_an_error(s3_server, s3_bucket, fault_proxy, status, attempts):
    put(s3_server.filesystem(), f"{s3_bucket}/obj", OBJ)
    fault_proxy.fail(status, method="GET", path_contains="/obj", times=None)
    fs = fresh_fs(fault_proxy,
                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts))
    with pytest.raises(OSError, match=GET_ERRORS[status]):
        get(fs, f"{s3_bucket}/obj")
    assert statuses(fault_proxy, "GET", "/obj") == [status] * attempts
    # the fault is the proxy's: the object is there
    assert get(s3_server.filesystem(), f"{s3_bucket}/obj") == OBJ


@pytest.mark.parametrize("status, code", [(500, "INTERNAL_FAILURE"), (503, "SLOW_DOWN")])
def test_5xx_xml_error_is_parsed(s3_server, s3_bucket, fault_proxy, status, code):
    """A listing's answer is read into a growing buffer: the SDK parses the
    proxy's XML error and reports its code and request id."""
    fault_proxy.fail(status, method="LIST", times=None)
    fs = fresh_fs(fault_proxy, retry_strategy=one_try())
    with pytest.raises(OSError, match=f"{code}.*FAULTPROXY"):
        fs.get_file_info(pafs.FileSelector(s3_bucket))
    assert statuses(fault_proxy, "LIST") == [status]


def test_5xx_on_a_small_read_is_not_retried(s3_server, s3_bucket, fault_proxy):
    """A pyarrow/AWS SDK limit the archive code must allow for: pyarrow
    reads into a buffer of the requested range's size, and the SDK writes an
    error's XML body there too. When the body does not fit (a read smaller
    than the few hundred bytes of an S3 error), the stream goes bad, curl
    aborts, and the error becomes a non-retryable INTERNAL_FAILURE "Failed to
    flush response stream" with the status lost: one 503 fails the read."""
    put(s3_server.filesystem(), f"{s3_bucket}/tiny", b"payload")
    fault_proxy.fail(503, method="GET", path_contains="/tiny", times=1)
    with pytest.raises(OSError, match="Failed to flush response stream"):
        get(fresh_fs(fault_proxy), f"{s3_bucket}/tiny")
    assert statuses(fault_proxy, "GET", "/tiny") == [503]


def test_from_uri_retries_5xx_every_200ms(s3_server, s3_bucket, fault_proxy):
    put(s3_server.filesystem(), f"{s3_bucket}/obj", OBJ)
    fs, root = pafs.FileSystem.from_uri(s3_server.uri(s3_bucket, "", endpoint=fault_proxy.endpoint))
    fault_proxy.fail(503, method="GET", path_contains="/obj", times=5)
    start = time.monotonic()
    assert get(fs, f"{root}/obj") == OBJ
    elapsed = time.monotonic() - start
    assert statuses(fault_proxy, "GET", "/obj") == [503] * 5 + [206]
    assert elapsed >= 5 * 0.2 * 0.9  # arrow's ConnectRetryStrategy: 200 ms apart


def test_from_uri_persistent_5xx_gives_up_after_about_6s(s3_server, s3_bucket, fault_proxy):
    """The slow case the archive tests must avoid: through a URI a server
    that keeps failing costs ~6 s per call (arrow's ConnectRetryStrategy)."""
    fs, root = pafs.FileSystem.from_uri(s3_server.uri(s3_bucket, "", endpoint=fault_proxy.endpoint))
    fault_proxy.fail(500, method="HEAD", times=None)
    start = time.monotonic()
    with pytest.raises(OSError, match="HTTP status 500"):
        fs.get_file_info(f"{root}/obj")
    elapsed = time.monotonic() - start
    assert 5.0 <= elapsed <= 20.0
    assert len(statuses(fault_proxy, "HEAD")) >= 20


def test_drop_is_a_network_error(s3_server, s3_bucket, fault_proxy):
    put(s3_server.filesystem(), f"{s3_bucket}/obj", OBJ)
    fault_proxy.drop(method="HEAD", times=None)
    # a new client: its first request is on a new connection, which curl
    # does not resend
    fs = fresh_fs(fault_proxy, retry_strategy=one_try())
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        fs.get_file_info(f"{s3_bucket}/obj")
    assert statuses(fault_proxy, "HEAD") == [None]


def test_drop_on_a_kept_alive_connection_is_resent_by_curl(s3_server, s3_bucket, fault_proxy):
    put(s3_server.filesystem(), f"{s3_bucket}/obj", OBJ)
    fs = fresh_fs(fault_proxy, retry_strategy=one_try())
    assert fs.get_file_info(f"{s3_bucket}/obj").size == len(OBJ)
    fault_proxy.drop(method="HEAD", times=None)
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        fs.get_file_info(f"{s3_bucket}/obj")
    # one SDK attempt, sent twice: on the kept-alive connection, then on a new one
    assert statuses(fault_proxy, "HEAD") == [200, None, None]


def test_drop_once_is_retried_by_pyarrow(s3_server, s3_bucket, fault_proxy):
    put(s3_server.filesystem(), f"{s3_bucket}/obj", OBJ)
    fault_proxy.drop(method="GET", path_contains="/obj", times=1)
    assert get(fresh_fs(fault_proxy), f"{s3_bucket}/obj") == OBJ
    assert statuses(fault_proxy, "GET", "/obj") == [None, 206]


def test_cut_upload_leaves_no_object(s3_server, s3_bucket, fault_proxy):
    direct = s3_server.filesystem()
    # a single PutObject (allow_delayed_open) cut after half its body
    fs = fresh_fs(fault_proxy, allow_delayed_open=True, retry_strategy=one_try())
    fault_proxy.cut_upload(path_contains="/single")
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        put(fs, f"{s3_bucket}/single", data(200_000, seed=4))
    assert statuses(fault_proxy, "PUT", "/single") == [None]
    assert direct.get_file_info(f"{s3_bucket}/single").type == pafs.FileType.NotFound

    # a part of a multipart upload: the upload is never completed
    fs = fresh_fs(fault_proxy, retry_strategy=one_try())
    fault_proxy.cut_upload(path_contains="partNumber=2", times=None)
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        put(fs, f"{s3_bucket}/multi", data(12 * 1024 * 1024, seed=5))
    assert None in statuses(fault_proxy, "PUT", "partNumber=2")
    assert direct.get_file_info(f"{s3_bucket}/multi").type == pafs.FileType.NotFound


def test_cut_part_once_is_retried_and_the_object_is_whole(s3_server, s3_bucket, fault_proxy):
    payload = data(12 * 1024 * 1024, seed=6)
    fault_proxy.cut_upload(path_contains="partNumber=2", times=1)
    put(fresh_fs(fault_proxy), f"{s3_bucket}/multi", payload)
    assert statuses(fault_proxy, "PUT", "partNumber=2") == [None, 200]
    assert get(s3_server.filesystem(), f"{s3_bucket}/multi") == payload


def test_slow_answer_and_request_timeout(s3_server, s3_bucket, fault_proxy):
    put(s3_server.filesystem(), f"{s3_bucket}/obj", OBJ)
    fault_proxy.slow(0.3, method="GET", path_contains="/obj")
    start = time.monotonic()
    assert get(fresh_fs(fault_proxy), f"{s3_bucket}/obj") == OBJ
    assert time.monotonic() - start >= 0.3

    # request_timeout applies on Linux too (curl's low-speed limit)
    fault_proxy.slow(3.0, method="HEAD", path_contains="/obj")
    fs = fresh_fs(fault_proxy, request_timeout=0.5, retry_strategy=one_try())
    start = time.monotonic()
    with pytest.raises(OSError, match="Timeout was reached"):
        fs.get_file_info(f"{s3_bucket}/obj")
    assert time.monotonic() - start < 2.5


def test_refuse_then_accept(s3_server, s3_bucket, fault_proxy):
    put(s3_server.filesystem(), f"{s3_bucket}/obj", OBJ)
    fs = fresh_fs(fault_proxy, retry_strategy=one_try())
    assert fs.get_file_info(f"{s3_bucket}/obj").size == len(OBJ)  # a kept-alive connection now
    fault_proxy.reset_counts()

    fault_proxy.refuse()
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        fs.get_file_info(f"{s3_bucket}/obj")
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        fresh_fs(fault_proxy, retry_strategy=one_try()).get_file_info(f"{s3_bucket}/obj")
    assert fault_proxy.refused >= 1
    assert all(status is None for _, _, status in fault_proxy.log)

    fault_proxy.accept()
    assert fs.get_file_info(f"{s3_bucket}/obj").size == len(OBJ)
    assert fault_proxy.log[-1] == ("HEAD", f"/{s3_bucket}/obj", 200)


def test_rules_match_in_order_and_clear(s3_server, s3_bucket, fault_proxy):
    put(s3_server.filesystem(), f"{s3_bucket}/obj", OBJ)
    conn = http.client.HTTPConnection("127.0.0.1", fault_proxy.port, timeout=10)

    def status(method: str, path: str) -> int:
        conn.request(method, path, headers=AUTH)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status >= 500:
            assert b"<Error><Code>" in body or method == "HEAD"
        return resp.status

    fault_proxy.fail(503, method="GET", path_contains="/other", times=None)
    fault_proxy.fail(500, method="GET", times=2)
    assert status("GET", f"/{s3_bucket}/other") == 503  # first rule first
    assert status("HEAD", f"/{s3_bucket}/obj") == 200  # method does not match
    assert status("GET", f"/{s3_bucket}/obj") == 500
    assert status("GET", f"/{s3_bucket}/obj") == 500
    assert status("GET", f"/{s3_bucket}/obj") == 200  # times=2 used up
    assert status("GET", f"/{s3_bucket}/other") == 503
    fault_proxy.fail(500, method="GET", times=None)
    assert status("GET", f"/{s3_bucket}?list-type=2") == 200  # a LIST is not a GET here
    fault_proxy.fail(500, method="LIST", times=None)
    assert status("GET", f"/{s3_bucket}?list-type=2") == 500
    assert status("GET", f"/{s3_bucket}/obj") == 500
    fault_proxy.clear()
    assert status("GET", f"/{s3_bucket}/other") == 404
    assert status("GET", f"/{s3_bucket}?list-type=2") == 200
    conn.close()
    assert fault_proxy.requests == {"GET": 7, "HEAD": 1, "LIST": 3}


# -- starting and stopping servers ---------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_stop_and_kill_by_pid(tmp_path):
    with start_s3_server(str(tmp_path / "a")) as server:
        assert s3mod.answers_http(server.port)
        pid = server.pid
    assert _gone(pid)
    assert not s3mod.answers_http(server.port, timeout=0.5)
    assert os.path.getsize(server.log_path) > 0

    server = start_s3_server(str(tmp_path / "b"))
    server.kill()
    assert _gone(server.pid) and not server.running()
    server.stop()  # idempotent


def test_start_retries_when_the_port_is_taken(tmp_path, monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = [taken.getsockname()[1]]
    real_free_port = s3mod.free_port
    monkeypatch.setattr(s3mod, "free_port", lambda: ports.pop() if ports else real_free_port())
    try:
        with start_s3_server(str(tmp_path)) as server:
            assert server.port != taken.getsockname()[1]
            assert s3mod.answers_http(server.port)
    finally:
        taken.close()
    logs = sorted(p.name for p in tmp_path.iterdir())
    assert len(logs) == 2  # the failed try's log is kept


def test_server_child_exits_on_sigterm(tmp_path):
    server = start_s3_server(str(tmp_path))
    server.stop()
    # moto exits 0 on SIGTERM (no SIGKILL was needed)
    assert server._proc.returncode == 0
