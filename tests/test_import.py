"""``import rehydrate`` stays light (docs/benchmarks.md, "Import time"):
pyarrow, numpy, prometheus_client and tqdm are imported only when used, and
pandas, polars and matplotlib never by rehydrate itself. Checked in a fresh
interpreter on each core, after the import, after a store's whole life
(open, writes, close, reopen by replay, reads), then after each feature that
needs one of them.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, sys

WATCHED = ("pyarrow", "numpy", "prometheus_client", "tqdm", "pandas", "polars", "matplotlib")


def loaded():
    return sorted(m for m in WATCHED if m in sys.modules)


out = {}
import rehydrate as rh

out["import"] = loaded()
path = sys.argv[1]
s = rh.Store.open(path, tables={"d": rh.DictTable})
s.put("t", "a", {"x": [1, 2.5, None]})
s.incr("t", "n", 2)
s.delete("t", "a")
s.put("d", 1, "one")
with s.batch() as b:
    b.put("t", "b", b"x")
s.sync()
s.close()
s = rh.Store.open(path, tables={"d": rh.DictTable})
assert s.table("t").to_dict() == {"n": 2, "b": b"x"}, s.table("t").to_dict()
assert dict(s.table("d")) == {1: "one"}
s.readiness()
out["store"] = loaded()
s.metrics()
out["metrics"] = loaded()
s.table("t").to_arrow()
out["to_arrow"] = loaded()
s.close()
print(json.dumps(out))
"""


def test_heavy_modules_load_only_when_used(core_env, tmp_path):
    run = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "state")], env=core_env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    stages = json.loads(run.stdout)
    assert stages["import"] == []
    assert stages["store"] == []
    assert stages["metrics"] == ["prometheus_client"]
    after = set(stages["to_arrow"])
    # pyarrow brings numpy; it also imports pandas, where installed, at its
    # first conversion of Python values (pyarrow's behaviour, not ours).
    assert {"pyarrow", "numpy", "prometheus_client"} <= after
    assert not after & {"tqdm", "polars", "matplotlib"}
