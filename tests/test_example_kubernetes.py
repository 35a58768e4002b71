"""examples/kubernetes/: every manifest valid against the Kubernetes schemas
(bundled by kubernetes-validate: offline, strict, so an unknown field fails),
the probes' paths ones a real store serves over HTTP, their port the
container's, the grace period longer than the app's shutdown, and the
container's arguments ones the consumer accepts."""

import glob
import http.client
import importlib.util
import os
import shlex

import pytest

from rehydrate import Store

yaml = pytest.importorskip("yaml")
kv = pytest.importorskip("kubernetes_validate")

HERE = os.path.dirname(__file__)
FOLDER = os.path.join(HERE, os.pardir, "examples", "kubernetes")
CONSUMER = os.path.join(HERE, os.pardir, "examples", "redis_stream_consumer.py")
# The oldest Kubernetes the manifests are for (preStop's sleep action is on
# by default from 1.30), and the newest whose schema is bundled.
VERSIONS = ("1.30.0", kv.latest_version())
FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(FOLDER, "*.yaml")))


def _load_consumer():
    spec = importlib.util.spec_from_file_location("redis_stream_consumer", CONSUMER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documents(name):
    with open(os.path.join(FOLDER, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifests():
    """{kind: the one manifest of that kind} over the folder."""
    out = {}
    for name in FILES:
        for doc in documents(name):
            assert doc["kind"] not in out, f"two {doc['kind']} manifests"
            out[doc["kind"]] = doc
    return out


def statefulset():
    return manifests()["StatefulSet"]


def container():
    (c,) = statefulset()["spec"]["template"]["spec"]["containers"]
    return c


def test_the_folder_holds_the_manifests():
    assert FILES == ["service.yaml", "statefulset.yaml"]
    assert set(manifests()) == {"Service", "StatefulSet"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", FILES)
def test_every_manifest_is_valid(name, version):
    for doc in documents(name):
        kv.validate(doc, version, strict=True)


def _set(doc, path, value):
    *parents, last = path
    for p in parents:
        doc = doc[p]
    doc[last] = value


def _delete(doc, path):
    *parents, last = path
    for p in parents:
        doc = doc[p]
    del doc[last]


C = ("spec", "template", "spec", "containers", 0)

BROKEN = {
    # a misspelt field is silently ignored by a lenient check: strict refuses it
    "misspelt-probe": lambda d: _set(d, C + ("readinesProbe",), {"httpGet": {"path": "/readyz",
                                                                            "port": 8080}}),
    "port-as-text": lambda d: _set(d, C + ("ports", 0, "containerPort"), "8080"),
    "no-selector": lambda d: _delete(d, ("spec", "selector")),
    "grace-as-text": lambda d: _set(d, ("spec", "template", "spec",
                                        "terminationGracePeriodSeconds"), "30s"),
    "period-as-text": lambda d: _set(d, C + ("livenessProbe", "periodSeconds"),
                                                 "ten"),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_a_broken_manifest_fails_validation(breakage):
    doc = statefulset()
    kv.validate(doc, VERSIONS[-1], strict=True)  # whole, it passes
    BROKEN[breakage](doc)
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, VERSIONS[-1], strict=True)


def probes():
    c = container()
    return {kind: c[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}


def probe_port(probe):
    """The container port number a probe's httpGet port names."""
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container()["ports"] if p["name"] == port]
    return number


def test_the_probes_are_the_paths_and_port_the_service_serves():
    p = probes()
    assert p["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert p["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert p["livenessProbe"]["httpGet"]["path"] == "/livez"
    (http_port,) = [q["containerPort"] for q in container()["ports"] if q["name"] == "http"]
    assert {probe_port(probe) for probe in p.values()} == {http_port}
    annotations = statefulset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == http_port
    (svc_port,) = manifests()["Service"]["spec"]["ports"]
    assert svc_port["targetPort"] in ("http", http_port)


def test_the_container_runs_the_consumer_with_arguments_it_accepts():
    c = container()
    assert c["command"][-1] == "/app/examples/redis_stream_consumer.py"
    args = _load_consumer().parse_args(c["args"])
    (http_port,) = [q["containerPort"] for q in c["ports"] if q["name"] == "http"]
    assert args.http_port == http_port
    assert args.http_host == "0.0.0.0"  # a kubelet probes the pod's IP, not its loopback
    (mount,) = c["volumeMounts"]
    assert os.path.commonpath([args.store, mount["mountPath"]]) == mount["mountPath"]
    assert args.store != mount["mountPath"]  # a folder in it (the volume root has lost+found)
    (claim,) = statefulset()["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == mount["name"]
    assert args.consumer == "$(POD_NAME)"  # stable across restarts: its pending entries
    assert any(e["name"] == "POD_NAME" for e in c["env"])
    assert shlex.join(c["args"])  # plain strings, no shell needed


def test_one_writer_a_headless_service_and_matching_labels():
    sts, svc = statefulset(), manifests()["Service"]
    spec = sts["spec"]
    assert spec["replicas"] == 1
    assert spec["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_the_grace_period_outlasts_prestop_and_the_shutdown_deadline():
    pod = statefulset()["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    deadline = _load_consumer().SHUTDOWN_DEADLINE_S
    # The grace period runs from the preStop hook's start: SIGTERM comes
    # after the sleep, and the shutdown must end before SIGKILL.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + deadline


def test_the_startup_probe_allows_a_cold_start():
    s, r = probes()["startupProbe"], probes()["readinessProbe"]
    assert s["failureThreshold"] * s["periodSeconds"] >= 300
    assert s["periodSeconds"] <= r["periodSeconds"]  # ready noticed as soon as readiness would


def _get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_real_store_serves_every_probe_path(store_dir):
    paths = {probe["httpGet"]["path"] for probe in probes().values()}
    paths.add(statefulset()["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    with Store.open(store_dir) as store:
        store.put("t", 1, 1)
        server = store.serve_http(port=0)  # 127.0.0.1, a free port
        try:
            for path in sorted(paths):
                assert _get(server.port, path) == 200, path
            assert _get(server.port, "/rehydrate/readyz") == 404  # the check can tell
        finally:
            server.close()
