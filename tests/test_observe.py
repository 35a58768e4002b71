"""Metrics and readiness over real HTTP, several stores in one registry, OpenMetrics
(docs/observability.md)."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from rehydrate import ConfigError, Store, StoreFailedError

from helpers import http_probe


def test_readyz_livez_metrics_and_404_over_http(store_dir):
    with Store.open(store_dir, sync="always") as s:
        for i in range(10):
            s.put("t", i, i)
        s.checkpoint()
        s.put("t", "x", 1)
        with s.serve_http() as srv:
            assert srv.port > 0
            code, body = http_probe.get(srv.port, "/readyz")
            assert code == 200 and json.loads(body)["ready"] is True
            code, body = http_probe.get(srv.port, "/livez")
            assert code == 200 and json.loads(body)["live"] is True
            code, text = http_probe.get(srv.port, "/metrics")
            assert code == 200
            assert http_probe.metric(text, "rehydrate_last_lsn") == 11
            assert http_probe.metric(text, "rehydrate_durable_lsn") == 11
            assert http_probe.metric(text, "rehydrate_checkpoints_total") == 1
            assert http_probe.metric(text, "rehydrate_checkpoint_lsn") == 10
            assert http_probe.metric(text, "rehydrate_ready") == 1
            assert 'rehydrate_warmup_phase_seconds{phase="replay"' in text
            code, body = http_probe.get(srv.port, "/nope")
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
            code, body = http_probe.get(srv.port, "/livez")
            assert code == 503 and json.loads(body)["live"] is False
        monkeypatch.undo()


def test_metrics_go_to_the_registry_given(store_dir):
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    with Store.open(store_dir) as s:
        s.put("t", 1, 1)
        assert s.metrics(reg) is reg
        assert http_probe.metric(generate_latest(reg).decode(), "rehydrate_last_lsn") == 1


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


# -- several stores, one registry ------------------------------------------------

@pytest.mark.parametrize("n", [2, 3])
def test_several_stores_share_one_registry(tmp_path, n):
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    stores = [Store.open(str(tmp_path / f"s{i}")) for i in range(n)]
    try:
        for i, s in enumerate(stores):
            for k in range(i + 1):
                s.put("t", k, k)
            assert s.metrics(reg) is reg
        for i, s in enumerate(stores):
            at = {"store": s.path}
            assert reg.get_sample_value("rehydrate_last_lsn", at) == i + 1
            assert reg.get_sample_value("rehydrate_ready", at) == 1
            assert reg.get_sample_value("rehydrate_checkpoints_total", at) == 0
            assert reg.get_sample_value("rehydrate_role", {**at, "role": "primary"}) == 1
        text = generate_latest(reg).decode()
        assert text.count("# TYPE rehydrate_last_lsn gauge") == 1
        assert text.count("rehydrate_last_lsn{") == n
        # Each store's own registry (no argument) still is its alone.
        own = stores[0].metrics()
        assert own is reg  # the registry given last is the store's
    finally:
        for s in stores:
            s.close()


def test_a_store_without_a_registry_has_its_own(tmp_path):
    with Store.open(str(tmp_path / "a")) as a, Store.open(str(tmp_path / "b")) as b:
        a.put("t", 1, 1)
        ra, rb = a.metrics(), b.metrics()
        assert ra is not rb and a.metrics() is ra
        assert ra.get_sample_value("rehydrate_last_lsn", {"store": a.path}) == 1
        assert ra.get_sample_value("rehydrate_last_lsn", {"store": b.path}) is None
        assert rb.get_sample_value("rehydrate_last_lsn", {"store": b.path}) == 0


def test_a_closed_store_leaves_the_registry(tmp_path):
    import gc

    from rehydrate import observe
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    a = Store.open(str(tmp_path / "a"))
    b = Store.open(str(tmp_path / "b"))
    try:
        a.metrics(reg)
        b.metrics(reg)
        assert reg.get_sample_value("rehydrate_last_lsn", {"store": a.path}) == 0
        a.close()
        assert reg.get_sample_value("rehydrate_last_lsn", {"store": a.path}) is None
        assert reg.get_sample_value("rehydrate_ready", {"store": a.path}) is None
        assert reg.get_sample_value("rehydrate_last_lsn", {"store": b.path}) == 0
        assert observe.collector_of(reg).stores() == [b]
        # A new store of the same directory takes its place.
        a2 = Store.open(str(tmp_path / "a"))
        a2.put("t", 1, 1)
        a2.metrics(reg)
        assert reg.get_sample_value("rehydrate_last_lsn", {"store": a2.path}) == 1
        a2.close()
    finally:
        b.close()
    # Held weakly: the registry keeps no store alive.
    ref = __import__("weakref").ref(b)
    del a, b, a2
    gc.collect()
    assert ref() is None


def test_adding_a_store_twice_does_nothing(store_dir):
    from rehydrate import observe
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    with Store.open(store_dir) as s:
        s.metrics(reg)
        s.metrics(reg)
        observe.register(s, reg)
        assert observe.collector_of(reg).stores() == [s]
        assert generate_latest(reg).decode().count("rehydrate_last_lsn{") == 1


def test_two_open_stores_of_one_directory_cannot_share_a_registry(store_dir):
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    with Store.open(store_dir) as s:
        s.put("t", 1, 1)
        s.sync()
        with Store.open_standby(store_dir) as standby:  # follows the same directory
            s.metrics(reg)
            with pytest.raises(ConfigError, match="own registry"):
                standby.metrics(reg)
            assert standby.metrics() is not reg  # its own is fine


def test_the_default_registry_takes_several_stores(tmp_path):
    from prometheus_client import REGISTRY

    with Store.open(str(tmp_path / "a")) as a, Store.open(str(tmp_path / "b")) as b:
        b.put("t", 1, 1)
        assert a.metrics(REGISTRY) is REGISTRY and b.metrics(REGISTRY) is REGISTRY
        assert REGISTRY.get_sample_value("rehydrate_last_lsn", {"store": a.path}) == 0
        assert REGISTRY.get_sample_value("rehydrate_last_lsn", {"store": b.path}) == 1
    assert REGISTRY.get_sample_value("rehydrate_last_lsn", {"store": a.path}) is None


def test_a_registry_with_clashing_names_is_a_config_error(store_dir):
    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry()
    Gauge("rehydrate_last_lsn", "someone else's", registry=reg)
    with Store.open(store_dir) as s:
        with pytest.raises(ConfigError, match="rehydrate_last_lsn"):
            s.metrics(reg)
        with pytest.raises(ConfigError):
            s.metrics(object())


def test_metrics_in_openmetrics_when_asked(store_dir):
    with Store.open(store_dir) as s:
        s.put("t", 1, 1)
        with s.serve_http() as srv:
            url = f"http://127.0.0.1:{srv.port}/metrics"
            req = urllib.request.Request(url, headers={
                "Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"})
            with urllib.request.urlopen(req, timeout=10) as r:
                ctype, text = r.headers["Content-Type"], r.read().decode()
            assert ctype.startswith("application/openmetrics-text")
            assert text.endswith("# EOF\n") and http_probe.metric(text, "rehydrate_last_lsn") == 1
            assert "# TYPE rehydrate_checkpoints counter" in text
            with urllib.request.urlopen(url, timeout=10) as r:
                ctype, text = r.headers["Content-Type"], r.read().decode()
            assert ctype.startswith("text/plain") and "# EOF" not in text
            assert http_probe.metric(text, "rehydrate_last_lsn") == 1
