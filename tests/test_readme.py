"""The README's embedded example runs as written (a newcomer copies it)."""

import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def test_the_embedded_example_runs_twice_and_finds_its_state(tmp_path, core_env):
    text = open(README, encoding="utf-8").read()
    code = re.search(r"## Embedded example\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 20
    code = code.replace('"/var/lib/myservice/state"', repr(str(tmp_path / "state")))
    first = subprocess.run([sys.executable, "-c", code], env=core_env, capture_output=True,
                           text=True)
    assert first.returncode == 0, first.stderr
    assert "{'cart': [17, 99], 'seen': 1732700000}" in first.stdout
    second = subprocess.run([sys.executable, "-c", code], env=core_env, capture_output=True,
                            text=True)
    assert second.returncode == 0, second.stderr
    assert "rehydrated tables ['sessions', 'hits'] up to LSN 4" in second.stdout
