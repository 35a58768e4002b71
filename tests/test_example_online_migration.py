"""examples/online_migration.py runs end to end, on both cores
(docs/migrations.md, "Online migrations").

The example is documentation: these tests check what it promises (the good
migration completes after its reads moved 1% -> 10% -> 100%, the broken one
reverts by itself, no acknowledged write is lost, a plot comes out, a bad
argument is a message), never how fast it was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "online_migration.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_good_migration_completes_and_the_broken_one_reverts_by_itself(tmp_path, core_env):
    png = tmp_path / "online.png"
    state = tmp_path / "state"
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "--dir", str(state), "--keys", "2000", "--rate", "1000",
         "--step-s", "0.4", "--plot", str(png), "--json"],
        env=core_env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "Traceback" not in out.stderr, out.stderr
    res = json.loads(out.stdout)
    assert res["ok"] is True and res["lost"] == 0

    good, bad = res["good"], res["broken"]
    assert good["state"] == "completed" and good["fraction"] == 1.0
    assert good["divergences"] == 0 and good["paths"]["new"]["reads"] > 0
    assert res["good_ledger"]["id"] == "split-name" and res["good_ledger"]["to_version"] == 2
    assert res["version_after"] == 2  # the broken version 3 never committed
    assert bad["state"] == "reverted" and bad["fraction"] == 0.0
    assert bad["divergences"] > 0 and "divergence" in bad["reason"]
    assert bad["revert_ms"] is not None and bad["revert_ms"] >= 0

    # Reads moved 1% -> 10% -> 100% for the good migration, in that order.
    fractions = [p["fraction"] for p in res["timeline"] if p["migration"] == "split-name"]
    seen = [f for i, f in enumerate(fractions) if i == 0 or f != fractions[i - 1]]
    assert [f for f in seen if f > 0][:3] == [0.01, 0.1, 1.0]
    assert fractions == sorted(fractions)  # never moved back
    assert res["load"]["reads"] > 0 and res["load"]["writes"] > 0
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_a_directory_in_use_is_refused_with_a_message(tmp_path, core_env):
    state = tmp_path / "state"
    state.mkdir()
    (state / "something").write_text("not ours")
    out = subprocess.run([sys.executable, str(EXAMPLE), "--dir", str(state)],
                         env=core_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "not empty" in out.stderr and "Traceback" not in out.stderr
