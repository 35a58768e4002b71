"""make dist-check's own checks (scripts/dist_check.py), on crafted wheels,
sdists and shared objects: each problem it exists to catch is caught, and a
good package passes. The whole run (build, fresh venv, smoke test) is
`make dist-check`, after `make test` in CI; it is too slow for the suite.
Also: the core this suite runs against was built stripped (setup.py)."""

import importlib.util
import io
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "dist_check.py"


def _load_dist_check():
    spec = importlib.util.spec_from_file_location("dist_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dc = _load_dist_check()

TRACKED = ["src/rehydrate/__init__.py", "src/rehydrate/py.typed", "src/rehydrate/_core/__init__.py",
           "src/rehydrate/_core/__init__.pyi", "src/rehydrate/_core/codec.pyx",
           "src/rehydrate/_core/codec.pxd", "src/rehydrate/_core/includes/lz4_decode.c",
           "src/rehydrate/_core/includes/lz4_decode.h"]
SO = "rehydrate/_core/codec.cpython-311-x86_64-linux-gnu.so"


def _shared_object(tmp: Path, name: str, flags: list[str]) -> bytes:
    """A small shared object compiled with ``flags`` by the compiler that
    builds the core (the suite runs where the core was built)."""
    src = tmp / "f.c"
    src.write_text("int rehydrate_probe(int x) { return x + 1; }\n")
    out = tmp / name
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    subprocess.run([*cc, "-shared", "-fPIC", *flags, str(src), "-o", str(out)], check=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("elf")
    return {"debug": _shared_object(tmp, "debug.so", ["-g", "-O2"]),
            "symbols": _shared_object(tmp, "symbols.so", ["-g0", "-O2"]),
            "stripped": _shared_object(tmp, "stripped.so", ["-g0", "-O2", "-s"])}


def _good_wheel(stripped: bytes) -> dict:
    return {"rehydrate/__init__.py": b"", "rehydrate/py.typed": b"",
            "rehydrate/_core/__init__.py": b"", "rehydrate/_core/__init__.pyi": b"",
            SO: stripped, "rehydrate-0.1.0.dist-info/RECORD": b""}


def test_a_wheel_of_modules_stripped_extensions_and_stubs_passes(objects):
    assert dc.wheel_problems(_good_wheel(objects["stripped"]), TRACKED) == []


@pytest.mark.parametrize("name", ["rehydrate/_core/codec.c", "rehydrate/_core/codec.pyx",
                                  "rehydrate/_core/codec.pxd",
                                  "rehydrate/_core/includes/lz4_decode.h",
                                  "rehydrate/_core/includes/lz4_decode.c",
                                  "rehydrate/_core/includes/lz4_decode.pxd",
                                  "rehydrate/notes.txt", "scripts/dist_smoke.py"])
def test_a_wheel_holding_anything_else_is_refused(objects, name):
    wheel = _good_wheel(objects["stripped"]) | {name: b"int x;"}
    assert dc.wheel_problems(wheel, TRACKED) == [
        f"wheel holds {name}, outside the rehydrate package" if not name.startswith("rehydrate/")
        else f"wheel holds {name}: only .py, py.typed, and the core's .so and .pyi belong there"]


@pytest.mark.parametrize("flags", ["debug", "symbols"])
def test_an_extension_with_symbols_or_debug_information_is_refused(objects, flags):
    problems = dc.wheel_problems(_good_wheel(objects[flags]), TRACKED)
    assert len(problems) == 1 and problems[0].startswith(f"{SO} is not stripped: it has ")
    assert ".symtab" in problems[0]
    assert (".debug_info" in problems[0]) == (flags == "debug")


def test_an_extension_that_is_not_elf_is_refused(objects):
    (problem,) = dc.wheel_problems(_good_wheel(b"MZ not an ELF file"), TRACKED)
    assert problem.startswith(f"{SO} is not an ELF file")


def test_a_wheel_missing_a_module_an_extension_or_the_stub_is_refused(objects):
    wheel = _good_wheel(objects["stripped"])
    for name in ("rehydrate/_core/__init__.py", SO, "rehydrate/_core/__init__.pyi"):
        del wheel[name]
    assert dc.wheel_problems(wheel, TRACKED) == [
        "wheel lacks rehydrate/_core/__init__.py",
        "wheel lacks the extension module rehydrate/_core/codec",
        "wheel lacks rehydrate/_core/__init__.pyi"]


def _sdist_names():
    return [*dc.SDIST_BUILD_FILES, *TRACKED, "PKG-INFO", "setup.cfg"]


def test_an_sdist_with_the_sources_and_build_files_passes():
    assert dc.sdist_problems(_sdist_names(), TRACKED) == []


def test_an_sdist_with_generated_c_or_build_outputs_is_refused():
    names = [*_sdist_names(), "src/rehydrate/_core/codec.c",
             "src/rehydrate/_core/codec.cpython-311-x86_64-linux-gnu.so",
             "src/rehydrate/__pycache__/store.cpython-311.pyc"]
    assert dc.sdist_problems(names, TRACKED) == [
        "sdist holds src/rehydrate/__pycache__/store.cpython-311.pyc, a build output",
        "sdist holds src/rehydrate/_core/codec.c, a .c that Cython generates",
        "sdist holds src/rehydrate/_core/codec.cpython-311-x86_64-linux-gnu.so, a build output"]


def test_an_sdist_missing_a_source_or_the_build_script_is_refused():
    names = [n for n in _sdist_names()
             if n not in ("setup.py", "src/rehydrate/_core/includes/lz4_decode.c")]
    assert dc.sdist_problems(names, TRACKED) == [
        "sdist lacks setup.py", "sdist lacks src/rehydrate/_core/includes/lz4_decode.c"]


def test_members_are_read_from_real_archives(tmp_path):
    sdist = tmp_path / "rehydrate-0.1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in ("setup.py", "src/rehydrate/__init__.py"):
            info = tarfile.TarInfo(f"rehydrate-0.1.0/{name}")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    assert sorted(dc.sdist_members(sdist)) == ["setup.py", "src/rehydrate/__init__.py"]
    wheel = tmp_path / "rehydrate-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("rehydrate/__init__.py", b"x = 1\n")
    assert dc.wheel_members(wheel) == {"rehydrate/__init__.py": b"x = 1\n"}


def test_the_install_environment_reaches_no_compiler(tmp_path):
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    env = dc.no_compiler_env(venv_bin, {"PATH": "/usr/bin:/bin", "PYTHONPATH": "src",
                                        "CC": "gcc", "HOME": "/root"})
    assert env == {"PATH": str(venv_bin), "CC": "/bin/false", "CXX": "/bin/false",
                   "LDSHARED": "/bin/false", "HOME": "/root"}
    assert dc.compilers_on(env["PATH"]) == []
    # The check sees a compiler wherever one is on that PATH.
    fake = venv_bin / "gcc"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert dc.compilers_on(env["PATH"]) == [str(fake)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="stripped on Linux only")
def test_the_core_under_test_was_built_stripped():
    if os.environ.get("REHYDRATE_DEBUG_SYMBOLS", "") not in ("", "0"):
        pytest.skip("REHYDRATE_DEBUG_SYMBOLS is set: the core keeps its symbols")
    spec = importlib.util.find_spec("rehydrate._core")
    folder = Path(spec.origin).parent
    extensions = sorted(folder.glob("*.so"))
    sources = sorted((SCRIPT.parent.parent / "src" / "rehydrate" / "_core").glob("*.pyx"))
    assert [p.name.split(".")[0] for p in extensions] == [p.stem for p in sources]
    for path in extensions:
        assert dc.elf_problems(path.name, path.read_bytes()) == []


def test_cibuildwheel_builds_manylinux_wheels_and_runs_the_smoke_test_on_each():
    import tomllib

    pyproject = SCRIPT.parent.parent / "pyproject.toml"
    config = tomllib.loads(pyproject.read_text())
    cibw = config["tool"]["cibuildwheel"]
    # The Pythons the suite runs on (3.11 and 3.12), the oldest the floor.
    assert cibw["build"] == ["cp311-manylinux_*", "cp312-manylinux_*"]
    assert config["project"]["requires-python"] == ">=3.11"
    command = cibw["test-command"].split()
    assert command[0] == "python" and command[1].startswith("{project}/")
    assert (SCRIPT.parent.parent / command[1].removeprefix("{project}/")).is_file()
