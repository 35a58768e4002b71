#!/usr/bin/env python3
"""Smoke test of an installed rehydrate (a wheel in a fresh environment).

Run by scripts/dist_check.py in a fresh venv with no compiler on PATH, and by
cibuildwheel after it installs each wheel it built (pyproject.toml,
[tool.cibuildwheel]). It must pass against the installed package, never a
checkout: it refuses a ``rehydrate`` imported from outside site-packages.

Checks: the package and its native core load from the installed files; no
build source was installed; the ``rehydrate`` command answers with the native
core; a store is opened, written, closed and reopened with its records back;
the pure twin, in a child process (``REHYDRATE_NO_EXTENSIONS=1``), opens the
same store and finds the same state. Prints one line per check and exits 1
with what failed.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path

# The pure twin's child: the state it found, and which cores it imported
# (the one that did the work is the one in sys.modules).
PURE_CHILD = """
import json, sys
import rehydrate as rh
with rh.Store.open(sys.argv[1]) as store:
    found = {"lsn": store.lsn, "digest": store.digest(), "u:1": store.table("users")["u:1"]}
found["cores"] = sorted(m for m in ("rehydrate._core", "rehydrate._pure") if m in sys.modules)
print(json.dumps(found))
"""

SOURCE_SUFFIXES = frozenset({".c", ".h", ".pyx", ".pxd"})


def check_installed_files() -> str:
    import rehydrate

    package = Path(rehydrate.__file__).resolve().parent
    site = {Path(p).resolve() for p in (sysconfig.get_path("purelib"),
                                        sysconfig.get_path("platlib"))}
    if package.parent not in site:
        raise AssertionError(f"rehydrate imported from {package}, not from site-packages "
                             f"({', '.join(map(str, sorted(site)))}): not an installed copy")
    extensions = sorted(p.name for p in (package / "_core").glob("*.so"))
    if not extensions:
        raise AssertionError(f"no extension module in {package / '_core'}")
    codec = importlib.import_module("rehydrate._core.codec")
    if not str(codec.__file__).endswith(".so"):
        raise AssertionError(f"rehydrate._core.codec loaded from {codec.__file__}, "
                             "not an extension module")
    sources = sorted(str(p.relative_to(package)) for p in package.rglob("*")
                     if p.suffix in SOURCE_SUFFIXES)
    if sources:
        raise AssertionError(f"build sources installed: {', '.join(sources)}")
    return f"{package}: {len(extensions)} extension modules"


def check_command() -> str:
    command = Path(sysconfig.get_path("scripts")) / "rehydrate"
    out = subprocess.run([str(command), "version", "--json"], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"{command} version --json exited {out.returncode}: "
                             f"{out.stderr.strip()}")
    info = json.loads(out.stdout)
    if info.get("core") != "native":
        raise AssertionError(f"the rehydrate command runs the {info.get('core')!r} core, "
                             "not the native one")
    return f"{command} version: {out.stdout.strip()}"


def check_store(state: Path) -> str:
    import rehydrate as rh

    with rh.Store.open(state) as store:
        store.put("users", "u:1", {"name": "ada", "cart": [17, 99]})
        store.put("users", "u:2", {"name": "bob"})
        store.incr("hits", "/checkout")
        store.incr("hits", "/checkout")
        store.sync()
        written = store.lsn
    with rh.Store.open(state) as store:
        if store.lsn != written:
            raise AssertionError(f"reopened at LSN {store.lsn}, wrote up to {written}")
        user = store.table("users")["u:1"]
        hits = store.table("hits")["/checkout"]
        if user != {"name": "ada", "cart": [17, 99]} or hits != 2:
            raise AssertionError(f"reopened state differs: u:1={user!r}, hits={hits!r}")
        store.checkpoint()
    if "rehydrate._pure" in sys.modules or "rehydrate._core.kvtable" not in sys.modules:
        raise AssertionError("the store did not run on the native core")
    return f"wrote {written} records, reopened them on the native core"


def check_pure_twin(state: Path) -> str:
    import rehydrate as rh

    with rh.Store.open(state) as store:
        native_digest = store.digest()
    env = dict(os.environ, REHYDRATE_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-c", PURE_CHILD, str(state)], env=env,
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"the pure twin's child exited {out.returncode}: "
                             f"{out.stderr.strip()[-2000:]}")
    found = json.loads(out.stdout)
    if found["cores"] != ["rehydrate._pure"]:
        raise AssertionError(f"REHYDRATE_NO_EXTENSIONS=1 imported {found['cores']}, "
                             "not the pure twin alone")
    if found["digest"] != native_digest or found["u:1"] != {"name": "ada", "cart": [17, 99]}:
        raise AssertionError(f"the pure twin found another state: {found}, native digest "
                             f"{native_digest}")
    return f"the pure twin reopened the same state (digest {native_digest})"


def main() -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="rehydrate-smoke-") as tmp:
        state = Path(tmp) / "state"
        checks: list[tuple[str, Callable[[], str]]] = [
            ("installed files", check_installed_files),
            ("command", check_command),
            ("store", lambda: check_store(state)),
            ("pure twin", lambda: check_pure_twin(state)),
        ]
        for name, check in checks:
            try:
                print(f"ok    {name}: {check()}")
            except Exception as e:  # every failed check is reported, then the next runs
                failures += 1
                print(f"FAIL  {name}: {type(e).__name__}: {e}")
    print("smoke: passed" if not failures else f"smoke: {failures} checks failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
