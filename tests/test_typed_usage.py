"""examples/typed_usage.py (type-checked by `make typecheck`) runs, on both cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "typed_usage.py"


@pytest.mark.parametrize("pure", [False, True], ids=["native", "pure"])
def test_typed_usage_runs(tmp_path, pure):
    env = dict(os.environ)
    env.pop("REHYDRATE_NO_EXTENSIONS", None)
    if pure:
        env["REHYDRATE_NO_EXTENSIONS"] = "1"
    out = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "state")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "ok"
    for line in ["refused: UnsupportedKeyError", "checkpoint lsn: True",
                 "users.ada: {'name': 'Ada'}",
                 "users.raw-key: [1, 2, 3]", "users.7: False", "counters.visits: 3",
                 "counters.orders: 1", "stats.3: {'hits': 5, 'score': 0.25}", "top.ada: 10",
                 "offsets: {'orders/0': 2}", "ready: True", "metrics: True",
                 "config error: config"]:
        assert line in lines, (line, out.stdout)
