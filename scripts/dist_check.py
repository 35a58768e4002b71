#!/usr/bin/env python3
"""make dist-check: build the sdist and the wheel, inspect both, install the
wheel in a fresh venv without a compiler and run scripts/dist_smoke.py there.

1. ``python -m build``: the sdist, then a wheel built from that sdist (so the
   sdist is proven to build), each in its own isolated build environment.
2. The sdist holds every tracked file of src/ and the build files, and none
   of the .c files Cython generates beside the .pyx.
3. The wheel holds only .py modules, the extension modules, ``py.typed`` and
   the core's .pyi stub (no .c, .h, .pyx, .pxd), every module of src/, and
   every extension module is stripped: no ``.symtab``, no ``.debug_*``
   section (read with pyelftools).
4. A fresh venv, with ``CC=/bin/false`` and a PATH holding only the venv's
   bin/, installs the wheel with ``--only-binary :all:`` (pip may not build
   anything) and runs scripts/dist_smoke.py from outside the checkout.

Each check prints one line; the run exits 1 if any failed, naming each.
docs/packaging.md has what the wheel holds and why.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
CORE = "src/rehydrate/_core"
# Beside the sources of src/, what building from the sdist needs.
SDIST_BUILD_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE")
# A compiler under any of these names on the install's PATH would make
# "installs without a compiler" untrue.
COMPILERS = ("cc", "gcc", "clang", "c++", "g++", "clang++", "x86_64-linux-gnu-gcc")


class CheckFailed(Exception):
    """A check found problems; its message lists them."""


# -- the sdist ---------------------------------------------------------------

def sdist_problems(names: Iterable[str], tracked_src: Iterable[str]) -> list[str]:
    """What is wrong with an sdist whose members are ``names`` (paths below its
    top folder) for a checkout whose tracked files under src/ are ``tracked_src``."""
    have = set(names)
    problems = [f"sdist lacks {path}" for path in (*SDIST_BUILD_FILES, *sorted(tracked_src))
                if path not in have]
    for path in sorted(have):
        p = PurePosixPath(path)
        if str(p.parent) == CORE and p.suffix == ".c":
            problems.append(f"sdist holds {path}, a .c that Cython generates")
        elif p.suffix in (".so", ".pyc"):
            problems.append(f"sdist holds {path}, a build output")
    return problems


def sdist_members(sdist: Path) -> list[str]:
    """The sdist's file names, below its top folder (``rehydrate-0.1.0/``)."""
    with tarfile.open(sdist) as tar:
        return [m.name.partition("/")[2] for m in tar.getmembers() if m.isfile()]


def tracked_sources(repo: Path) -> list[str]:
    """The files git tracks under src/ (what the sdist must carry)."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "src"], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise CheckFailed(f"git ls-files src failed in {repo}: {out.stderr.strip()}")
    return out.stdout.split()


# -- the wheel ---------------------------------------------------------------

def wheel_member_problem(name: str) -> str | None:
    """Why ``name`` (a path in a wheel) should not be there, or None."""
    p = PurePosixPath(name)
    if p.parts[0].endswith(".dist-info"):
        return None
    if p.parts[0] != "rehydrate":
        return f"wheel holds {name}, outside the rehydrate package"
    if p.suffix == ".py" or name == "rehydrate/py.typed":
        return None
    if str(p.parent) == "rehydrate/_core" and p.suffix in (".so", ".pyi"):
        return None
    return f"wheel holds {name}: only .py, py.typed, and the core's .so and .pyi belong there"


def elf_problems(name: str, data: bytes) -> list[str]:
    """Why the shared object ``data`` (called ``name``) is not stripped."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        sections = [s.name for s in ELFFile(io.BytesIO(data)).iter_sections()]
    except ELFError as e:
        return [f"{name} is not an ELF file: {e}"]
    left = [s for s in sections if s == ".symtab" or s.startswith((".debug", ".zdebug"))]
    if left:
        return [f"{name} is not stripped: it has {', '.join(left)}"]
    return []


def expected_wheel_members(tracked_src: Iterable[str]) -> tuple[set[str], set[str]]:
    """The modules (``rehydrate/...py``) and the extension modules' names
    (``rehydrate/_core/codec``) a wheel built from these sources must hold."""
    modules, extensions = set(), set()
    for path in tracked_src:
        p = PurePosixPath(path)
        if p.suffix == ".py":
            modules.add(str(p.relative_to("src")))
        elif p.suffix == ".pyx" and str(p.parent) == CORE:
            extensions.add(str(p.relative_to("src").with_suffix("")))
    return modules, extensions


def wheel_problems(members: Mapping[str, bytes], tracked_src: Iterable[str]) -> list[str]:
    """What is wrong with a wheel whose files are ``members`` (name: bytes)."""
    problems = [why for name in sorted(members) if (why := wheel_member_problem(name))]
    modules, extensions = expected_wheel_members(tracked_src)
    problems += [f"wheel lacks {m}" for m in sorted(modules - set(members))]
    built = {name.split(".", 1)[0] for name in members if name.endswith(".so")}
    problems += [f"wheel lacks the extension module {e}" for e in sorted(extensions - built)]
    for name in ("rehydrate/py.typed", "rehydrate/_core/__init__.pyi"):
        if name not in members:
            problems.append(f"wheel lacks {name}")
    for name in sorted(members):
        if name.endswith(".so"):
            problems += elf_problems(name, members[name])
    return problems


def wheel_members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist() if not info.is_dir()}


# -- installing without a compiler ---------------------------------------------

def no_compiler_env(venv_bin: Path, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with PATH holding only ``venv_bin`` and every compiler
    variable pointing at /bin/false."""
    env = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=str(venv_bin), CC="/bin/false", CXX="/bin/false", LDSHARED="/bin/false")
    env.pop("VIRTUAL_ENV", None)
    return env


def compilers_on(path: str) -> list[str]:
    """The compilers a PATH of ``path`` reaches."""
    return [found for name in COMPILERS if (found := shutil.which(name, path=path))]


# -- the run -------------------------------------------------------------------

def run(cmd: list[str], *, cwd: Path, env: Mapping[str, str] | None = None,
        what: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        tail = (out.stdout + out.stderr).strip().splitlines()[-25:]
        raise CheckFailed(f"{what} exited {out.returncode}:\n    " + "\n    ".join(tail))
    return out


def only(paths: list[Path], what: str, where: Path) -> Path:
    if len(paths) != 1:
        raise CheckFailed(f"expected one {what} in {where}, found {[p.name for p in paths]}")
    return paths[0]


def build(outdir: Path) -> tuple[Path, Path]:
    """The sdist and the wheel ``python -m build`` makes (the wheel from the sdist)."""
    run([sys.executable, "-m", "build", "--outdir", str(outdir), str(REPO)], cwd=REPO,
        what="python -m build")
    return (only(sorted(outdir.glob("rehydrate-*.tar.gz")), "sdist", outdir),
            only(sorted(outdir.glob("rehydrate-*.whl")), "wheel", outdir))


def install_and_smoke(wheel: Path, work: Path) -> str:
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=work, what="python -m venv")
    env = no_compiler_env(venv / "bin", os.environ)
    reachable = compilers_on(env["PATH"])
    if reachable:
        raise CheckFailed(f"a compiler is on the install's PATH: {', '.join(reachable)}")
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--only-binary", ":all:",
         str(wheel)], cwd=work, env=env, what="pip install of the wheel without a compiler")
    # From outside the checkout, so that only the installed package can be imported.
    out = run([str(venv / "bin" / "python"), str(REPO / "scripts" / "dist_smoke.py")],
              cwd=work, env=env, what="scripts/dist_smoke.py in the fresh venv")
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outdir", type=Path, default=REPO / "dist",
                        help="where the sdist and the wheel go (emptied of old ones first)")
    args = parser.parse_args(argv)
    args.outdir = args.outdir.resolve()

    failures: list[str] = []

    def report(name: str, problems: list[str], ok: str) -> None:
        if problems:
            failures.append(name)
            print(f"FAIL  {name}:\n" + "\n".join(f"    {p}" for p in problems))
        else:
            print(f"ok    {name}: {ok}")

    args.outdir.mkdir(parents=True, exist_ok=True)
    for old in [*args.outdir.glob("rehydrate-*.tar.gz"), *args.outdir.glob("rehydrate-*.whl")]:
        old.unlink()
    try:
        started = time.monotonic()
        sdist, wheel = build(args.outdir)
        print(f"ok    build: {sdist.name} and {wheel.name} (from the sdist) in "
              f"{time.monotonic() - started:.0f} s")
        tracked = tracked_sources(REPO)
        members = sdist_members(sdist)
        report("sdist", sdist_problems(members, tracked),
               f"{len(members)} files, {sdist.stat().st_size} bytes, no generated .c")
        files = wheel_members(wheel)
        so_bytes = sum(len(data) for name, data in files.items() if name.endswith(".so"))
        report("wheel", wheel_problems(files, tracked),
               f"{len(files)} files, {wheel.stat().st_size} bytes; "
               f"{sum(n.endswith('.so') for n in files)} extension modules, {so_bytes} bytes, "
               "stripped; no .c, .h, .pyx, .pxd")
        with tempfile.TemporaryDirectory(prefix="rehydrate-dist-") as tmp:
            started = time.monotonic()
            smoke = install_and_smoke(wheel, Path(tmp))
            print(f"ok    install without a compiler and smoke test "
                  f"({time.monotonic() - started:.0f} s):\n" +
                  "\n".join(f"    {line}" for line in smoke.splitlines()))
    except CheckFailed as e:
        failures.append(str(e).splitlines()[0])
        print(f"FAIL  {e}")
    if failures:
        print(f"dist-check: {len(failures)} failed: " + "; ".join(failures))
        return 1
    print("dist-check: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
