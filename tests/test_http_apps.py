"""The probes as ASGI and WSGI apps, mounted in a web framework and served
by real servers on 127.0.0.1 (docs/observability.md): the ASGI app in a
Starlette app under uvicorn (a child process, tests/helpers/asgi_probes.py),
the WSGI app under a prefix (werkzeug's DispatcherMiddleware) on wsgiref's
server; both answer as ``serve_http()`` does."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from rehydrate import ConfigError, Store, StoreFailedError, Warmup, observe

HELPERS = os.path.join(os.path.dirname(__file__), "helpers")
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

sys.path.insert(0, HELPERS)
from replication import wait_until  # noqa: E402


def _request(url, method="GET", accept=None):
    req = urllib.request.Request(url, method=method)
    if accept is not None:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def _sample(text, name, store):
    want = f'{name}{{store="{store}"}} '
    for line in text.splitlines():
        if line.startswith(want):
            return float(line[len(want):].split(" ")[0])
    raise AssertionError(f"{name} of {store} not in the metrics")


# -- WSGI, mounted under a prefix, on wsgiref's server --------------------------

class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def wsgi_serve():
    """serve(app) -> base URL; the servers stop at the end of the test."""
    servers = []

    def serve(app):
        srv = make_server("127.0.0.1", 0, app, server_class=WSGIServer, handler_class=_Quiet)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        servers.append((srv, t))
        return f"http://127.0.0.1:{srv.server_port}"

    yield serve
    for srv, t in servers:
        srv.shutdown()
        srv.server_close()
        t.join()


def _root(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"root {environ['PATH_INFO']}".encode()]


def _held_open(path):
    """A background open held in its prime phase until ``go`` is set."""
    with Store.open(path) as s:
        s.put("t", 1, 1)
    in_hook, go = threading.Event(), threading.Event()

    def prime(store, progress):
        in_hook.set()
        go.wait()

    store = Store.open_background(path, warmup=Warmup(prime=[prime], listeners=[]))
    assert in_hook.wait(30)
    return store, go


def test_wsgi_app_mounted_under_a_prefix_answers_as_serve_http(tmp_path, wsgi_serve):
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    a = Store.open(str(tmp_path / "a"), sync="always")
    held, go = _held_open(str(tmp_path / "held"))
    try:
        a.put("t", 1, 1)
        a.checkpoint()
        a.put("t", 2, 2)
        base = wsgi_serve(DispatcherMiddleware(_root, {
            "/ops/a": a.wsgi_app(),
            "/ops/held": held.wsgi_app(),
            "/ops/both": observe.wsgi_app(a, held),
        }))
        with a.serve_http() as srv:
            plain = f"http://127.0.0.1:{srv.port}"
            for path in ("/readyz", "/livez", "/nope", "/"):
                want = _request(plain + path)
                got = _request(base + "/ops/a" + path)
                assert got[0] == want[0] and json.loads(got[2]) == json.loads(want[2])
                assert got[1]["Content-Type"] == want[1]["Content-Type"] == "application/json"
            assert _request(base + "/ops/a/readyz")[0] == 200
            assert _request(base + "/ops/a/nope")[0] == 404
            for m in ("POST", "PUT", "DELETE"):
                for url in (base + "/ops/a/readyz", plain + "/readyz"):
                    code, headers, body = _request(url, m)
                    assert code == 405 and headers["Allow"] == "GET, HEAD"
        # The prefix is the mount's: outside it, the root app answers.
        assert _request(base + "/readyz")[2] == "root /readyz"
        code, headers, text = _request(base + "/ops/a/metrics")
        assert code == 200 and headers["Content-Type"].startswith("text/plain")
        assert _sample(text, "rehydrate_last_lsn", a.path) == 2
        assert _sample(text, "rehydrate_checkpoints_total", a.path) == 1
        code, headers, text = _request(base + "/ops/a/metrics", accept=OPENMETRICS)
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert text.endswith("# EOF\n") and _sample(text, "rehydrate_last_lsn", a.path) == 2
        code, headers, body = _request(base + "/ops/a/livez", "HEAD")
        assert code == 200 and body == "" and int(headers["Content-Length"]) > 0

        # Not ready yet: 503 with the progress; both: 503 until both are.
        code, _, body = _request(base + "/ops/held/readyz")
        assert code == 503 and json.loads(body)["phase"] == "prime"
        code, _, body = _request(base + "/ops/both/readyz")
        both = json.loads(body)
        assert code == 503 and both["ready"] is False
        assert both["stores"][a.path]["ready"] is True
        assert both["stores"][held.path]["ready"] is False
        text = _request(base + "/ops/both/metrics")[2]
        assert _sample(text, "rehydrate_ready", a.path) == 1
        assert _sample(text, "rehydrate_ready", held.path) == 0
        go.set()
        assert wait_until(lambda: _request(base + "/ops/held/readyz")[0] == 200)
        code, _, body = _request(base + "/ops/both/readyz")
        assert code == 200 and json.loads(body)["ready"] is True
        assert _request(base + "/ops/both/livez")[0] == 200
    finally:
        go.set()
        held.close()
        a.close()


def test_wsgi_livez_is_503_once_the_store_failed(store_dir, wsgi_serve, monkeypatch):
    from rehydrate import _fileio

    with Store.open(store_dir, sync="always") as s:
        s.put("t", 1, 1)
        base = wsgi_serve(s.wsgi_app())
        assert _request(base + "/livez")[0] == 200

        def broken(fd):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(_fileio, "fsync", broken)
        with pytest.raises(StoreFailedError):
            s.put("t", 2, 2)
        code, _, body = _request(base + "/livez")
        assert code == 503 and json.loads(body)["live"] is False
        monkeypatch.undo()


# -- ASGI, mounted in Starlette, under uvicorn -------------------------------------

@pytest.fixture
def uvicorn_app(tmp_path, core_env):
    """The helper app under uvicorn: (base URL, command(line), paths)."""
    ready_dir, held_dir = str(tmp_path / "ready"), str(tmp_path / "held")
    proc = subprocess.Popen([sys.executable, os.path.join(HELPERS, "asgi_probes.py"),
                             ready_dir, held_dir], env=core_env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving "), line
        base = f"http://127.0.0.1:{int(line.split()[1])}"

        def command(word):
            proc.stdin.write(word + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ok"

        yield base, command, (ready_dir, held_dir)
    finally:
        os.kill(proc.pid, 9)
        proc.wait(30)


def test_asgi_app_mounted_in_starlette_under_uvicorn(uvicorn_app):
    base, command, (ready_dir, held_dir) = uvicorn_app
    assert _request(base + "/hello")[2] == "hello"  # the app's own route
    code, headers, body = _request(base + "/ready/readyz")
    assert code == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["ready"] is True and json.loads(body)["phase"] == "ready"
    code, _, body = _request(base + "/ready/livez")
    assert code == 200 and json.loads(body) == {"live": True, "error": None}
    code, headers, text = _request(base + "/ready/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain")
    assert _sample(text, "rehydrate_last_lsn", ready_dir) == 2
    assert "# EOF" not in text
    code, headers, text = _request(base + "/ready/metrics", accept=OPENMETRICS)
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    assert _sample(text, "rehydrate_checkpoints_total", ready_dir) == 1
    code, _, body = _request(base + "/ready/nope")
    assert code == 404 and json.loads(body)["paths"] == ["/readyz", "/livez", "/metrics", "/migrations"]
    code, headers, _ = _request(base + "/ready/readyz", "POST")
    assert code == 405 and headers["allow"] == "GET, HEAD"

    code, _, body = _request(base + "/held/readyz")
    assert code == 503 and json.loads(body)["phase"] == "prime"
    code, _, body = _request(base + "/both/readyz")
    assert code == 503 and set(json.loads(body)["stores"]) == {ready_dir, held_dir}
    command("release")
    assert wait_until(lambda: _request(base + "/held/readyz")[0] == 200)
    assert _request(base + "/both/readyz")[0] == 200

    command("fail")
    code, _, body = _request(base + "/ready/livez")
    assert code == 503 and json.loads(body)["live"] is False
    code, _, body = _request(base + "/both/livez")
    both = json.loads(body)
    assert code == 503 and both["live"] is False and both["stores"][ready_dir]["live"] is False


# -- the ASGI protocol itself --------------------------------------------------------

def _call(app, scope, incoming=()):
    """Run ``app`` on ``scope``; the messages it sent."""
    sent, queue = [], list(incoming)

    async def receive():
        return queue.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def _http(path, root_path="", method="GET"):
    return {"type": "http", "method": method, "path": path, "root_path": root_path,
            "headers": [], "query_string": b""}


def test_asgi_routes_the_path_below_root_path_either_way(store_dir):
    with Store.open(store_dir) as s:
        app = s.asgi_app()
        # path with the mount point in it (ASGI, uvicorn --root-path, Starlette
        # now) or without (older Starlette): the same route.
        for scope in (_http("/x/readyz", "/x"), _http("/readyz", "/x"), _http("/readyz")):
            start, body = _call(app, scope)
            assert start["status"] == 200 and json.loads(body["body"])["ready"] is True
        assert _call(app, _http("/x", "/x"))[0]["status"] == 404
        assert _call(app, _http("/xy/readyz", "/x"))[0]["status"] == 404
        start, body = _call(app, _http("/readyz", method="HEAD"))
        assert start["status"] == 200 and body["body"] == b""
        assert (b"allow", b"GET, HEAD") in _call(app, _http("/metrics", method="PUT"))[0][
            "headers"]


def test_asgi_lifespan_and_websocket(store_dir):
    with Store.open(store_dir) as s:
        app = s.asgi_app()
        sent = _call(app, {"type": "lifespan"},
                     [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                             "lifespan.shutdown.complete"]
        sent = _call(app, {"type": "websocket", "path": "/readyz"}, [{"type": "websocket.connect"}])
        assert sent[0]["type"] == "websocket.close"
        with pytest.raises(ConfigError):
            _call(app, {"type": "nonsense"})


def test_probes_need_a_store():
    with pytest.raises(ConfigError):
        observe.asgi_app()
    with pytest.raises(ConfigError):
        observe.wsgi_app()
