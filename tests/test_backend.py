"""The core is chosen explicitly: native by default, pure only when asked."""

import importlib
import json
import subprocess
import sys

import pytest

from rehydrate import _backend


def test_a_missing_native_core_is_an_import_error_not_a_fallback(monkeypatch, core):
    real = importlib.import_module

    def broken(name, *a, **kw):
        if name == "rehydrate._core":
            raise ImportError("simulated: extension not built")
        return real(name, *a, **kw)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ImportError, match="REHYDRATE_NO_EXTENSIONS=1"):
        _backend.load("native")


def test_unknown_core_name_is_refused(core):
    with pytest.raises(ValueError):
        _backend.load("fast")


def test_environment_switch_selects_the_core_in_a_child_process(core_env, core):
    out = subprocess.run([sys.executable, "-m", "rehydrate", "version", "--json"],
                         env=core_env, capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["core"] == core.IMPLEMENTATION
    if core.IMPLEMENTATION == "native":
        assert info["crc32c"] in ("sse4.2", "software")


def test_use_restores_the_previous_core(core):
    before = _backend.core()
    other = "pure" if core.IMPLEMENTATION == "native" else "native"
    with _backend.use(other) as module:
        assert _backend.core() is module
        assert module.IMPLEMENTATION == other
    assert _backend.core() is before


def test_demo_writes_rehydrates_in_a_fresh_process_and_verifies(core_env, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "rehydrate.demo", "--ops", "20000", "--keys", "3000",
         "--dir", str(tmp_path / "demo")],
        env=core_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("state check: OK") == 2  # from the log, then from the snapshot
    assert "OK: 1 segments" in out.stdout
    assert "from the snapshot" in out.stdout
