"""examples/zero_downtime_deploy.py runs end to end, on both cores
(docs/replication.md, "A zero-downtime deploy, end to end").

The example is documentation: these tests check what it promises (the
handoff happens, no acknowledged write is lost, a window and a plot come
out, errors are messages), never how fast it was.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "zero_downtime_deploy.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_deploy_hands_over_without_losing_an_acknowledged_write(tmp_path, core_env):
    png = tmp_path / "deploy.png"
    state = tmp_path / "state"
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "--dir", str(state), "--seconds", "2", "--rate", "500",
         "--plot", str(png), "--json"],
        env=core_env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    res = json.loads(out.stdout)

    assert res["handoff"] is True and res["ok"] is True
    assert res["promote"]["role"] == "primary" and res["promote"]["epoch"] == 2
    assert res["acknowledged"] > 0
    assert res["acknowledged_by"]["v1"] > 0 and res["acknowledged_by"]["v2"] > 0
    assert res["acknowledged"] + res["errors"] == res["sent"]
    assert res["lost"] == 0 and res["lost_keys"] == []
    assert res["unexpected_keys"] == 0
    window = res["window_ms"]
    assert isinstance(window, float) and math.isfinite(window) and window > 0
    assert set(res["latency_ms"]) == {"before", "during", "after"}
    assert res["latency_ms"]["during"]["n"] >= 1

    # v2 read v1's dollars as cents while it was still a standby.
    read = res["standby_read"]
    assert read["v2_read"]["role"] == "standby"
    assert read["v2_read"]["cents"] == read["cents_written"]
    assert isinstance(read["v2_read"]["stored"], int)

    assert png.read_bytes()[:8] == PNG_MAGIC
    assert state.is_dir(), "--dir is kept for the reader to look at"


def test_a_directory_in_use_is_refused_with_a_message(tmp_path, core_env):
    state = tmp_path / "state"
    state.mkdir()
    (state / "something").write_text("not ours")
    out = subprocess.run([sys.executable, str(EXAMPLE), "--dir", str(state)],
                         env=core_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "is not empty" in out.stderr and "Traceback" not in out.stderr
    assert (state / "something").read_text() == "not ours"
