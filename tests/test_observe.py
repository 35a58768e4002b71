"""Metrics and readiness over real HTTP (docs/warmup.md, "Metrics and HTTP")."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from rehydrate import ConfigError, Store, StoreFailedError


def _get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def test_readyz_livez_metrics_and_404_over_http(store_dir):
    with Store.open(store_dir, sync="always") as s:
        for i in range(10):
            s.put("t", i, i)
        s.checkpoint()
        s.put("t", "x", 1)
        with s.serve_http() as srv:
            assert srv.port > 0
            code, body = _get(srv.port, "/readyz")
            assert code == 200 and json.loads(body)["ready"] is True
            code, body = _get(srv.port, "/livez")
            assert code == 200 and json.loads(body)["live"] is True
            code, text = _get(srv.port, "/metrics")
            assert code == 200
            assert _metric(text, "rehydrate_last_lsn") == 11
            assert _metric(text, "rehydrate_durable_lsn") == 11
            assert _metric(text, "rehydrate_checkpoints_total") == 1
            assert _metric(text, "rehydrate_checkpoint_lsn") == 10
            assert _metric(text, "rehydrate_ready") == 1
            assert 'rehydrate_warmup_phase_seconds{phase="replay"' in text
            code, body = _get(srv.port, "/nope")
            assert code == 404 and "/readyz" in body
        with pytest.raises(OSError):  # closed: nothing listens any more
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()


def test_livez_is_503_once_the_store_failed(store_dir, monkeypatch):
    from rehydrate import _fileio

    with Store.open(store_dir, sync="always") as s:
        s.put("t", 1, 1)
        with s.serve_http() as srv:
            def broken(fd):
                raise OSError(5, "Input/output error")
            monkeypatch.setattr(_fileio, "fsync", broken)
            with pytest.raises(StoreFailedError):
                s.put("t", 2, 2)
            code, body = _get(srv.port, "/livez")
            assert code == 503 and json.loads(body)["live"] is False
        monkeypatch.undo()


def test_metrics_go_to_the_registry_given(store_dir):
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    with Store.open(store_dir) as s:
        s.put("t", 1, 1)
        assert s.metrics(reg) is reg
        assert _metric(generate_latest(reg).decode(), "rehydrate_last_lsn") == 1


def test_a_port_in_use_is_a_clear_error(store_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with Store.open(store_dir) as s:
            with pytest.raises(ConfigError) as ei:
                s.serve_http(port=port)
            assert str(port) in str(ei.value)
            with pytest.raises(ConfigError):
                s.serve_http(port=-1)
