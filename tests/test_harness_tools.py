"""The harness's own rule for a missing tool (tests/helpers/tier.py): a
skip on a developer's machine, a failure under CI (CI=true)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import tier


def test_a_missing_tool_skips_outside_ci(monkeypatch):
    monkeypatch.setattr(tier, "CI", False)
    with pytest.raises(pytest.skip.Exception, match="frobnicator is not installed"):
        tier.missing_tool("frobnicator is not installed")


def test_a_missing_tool_fails_under_ci(monkeypatch):
    monkeypatch.setattr(tier, "CI", True)
    with pytest.raises(pytest.fail.Exception, match="frobnicator is not installed.*under CI"):
        tier.missing_tool("frobnicator is not installed")


@pytest.mark.parametrize("value, ci", [("true", True), ("1", True), ("", False),
                                       ("false", False)])
def test_ci_is_read_from_the_environment(value, ci, tmp_path):
    helpers = str(tier.__file__).rsplit("/helpers/", 1)[0]
    out = subprocess.run([sys.executable, "-c", "from helpers import tier; print(tier.CI)"],
                         env={"CI": value, "PATH": "/usr/bin:/bin"}, cwd=helpers,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(ci)
