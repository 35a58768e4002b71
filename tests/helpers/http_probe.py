"""GETs of a store's HTTP endpoints on 127.0.0.1, and one metric read from
the Prometheus text they serve."""

import urllib.error
import urllib.request


def get(port, path):
    """(status, body text); an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text, name):
    """The first sample of ``name`` in a metrics page; AssertionError if absent."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")
