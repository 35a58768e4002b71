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


def test_the_async_example_runs_and_leaves_the_same_state(tmp_path, core_env):
    text = open(README, encoding="utf-8").read()
    code = re.search(r"The same in an asyncio service.*?```python\n(.*?)```", text, re.S).group(1)
    assert "async def main" in code and len(code.strip().splitlines()) <= 20
    code = code.replace('"/var/lib/myservice/state"', repr(str(tmp_path / "state")))
    code += "\nimport asyncio\nasyncio.run(main())\n"
    out = subprocess.run([sys.executable, "-c", code], env=core_env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert "{'cart': [17, 99], 'seen': 1732700000}" in out.stdout
    from rehydrate import Store
    with Store.open(str(tmp_path / "state"), recovery="strict") as s:
        assert s.lsn == 4
        assert dict(s.table("sessions").items()) == {"u:42": {"cart": [17, 99],
                                                             "seen": 1732700000},
                                                    "u:43": {"cart": []}}
        assert dict(s.table("hits").items()) == {"/checkout": 1}
