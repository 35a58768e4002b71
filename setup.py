"""Builds the native core ``rehydrate._core`` from ``src/rehydrate/_core``.

The core's sources sit in its package: each ``.pyx`` with the ``.pxd`` that
shares its cdef functions and classes with the other modules (cimported
relatively, ``from .codec cimport ...``), and ``includes/`` with the C
headers, the hand-written C sources and the ``.pxd`` declaring each header.
Cython names every module after its place in the package, so the sources
need no mirror path. The wheel carries the extensions, the Python modules,
``py.typed`` and the core's ``.pyi`` stub, none of these sources
(pyproject.toml's package-data); the sdist carries the sources
(MANIFEST.in), never the ``.c`` Cython generates (docs/packaging.md).

On Linux the extensions are built without debug information (``-g0``) and
linked stripped (``-s``): a sixth of the size they have with their symbols,
which ``REHYDRATE_DEBUG_SYMBOLS=1`` keeps, for gdb, perf or valgrind.

Cython is a build requirement (pyproject.toml); a missing compiler or Cython
stops the build with a clear message instead of installing a package whose
import then fails.
"""

import os
import sys

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - build environment problem
    sys.exit(
        "rehydrate needs Cython >= 3.0 to build its native core: "
        "pip install Cython (pip does this itself when building from pyproject.toml)"
    )

def _require_c_compiler() -> None:
    import shutil
    import sysconfig

    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        sys.exit(
            f"rehydrate needs a C compiler to build its native core, and {cc!r} is not "
            "on PATH: install one (Debian: apt-get install build-essential) or set CC"
        )


# Commands that compile; the others (sdist, egg_info, dist_info) only list
# files and metadata, so they neither need a compiler nor run Cython: an sdist
# made from a checkout then leaves no generated .c behind in src/.
BUILDING = any(cmd in sys.argv for cmd in ("build_ext", "build", "bdist_wheel", "install",
                                           "develop", "editable_wheel"))
if BUILDING:
    _require_c_compiler()

CORE = os.path.join("src", "rehydrate", "_core")
INCLUDES = os.path.join(CORE, "includes")
# Each extension module and the hand-written C (in includes/) it compiles in.
C_SOURCES = {
    "codec": ["crc32c_impl.c", "lz4_decode.c"],
    "kvtable": [],
    # The frame modules by role (frames gathers their names as the twin's
    # rehydrate._pure.frames has them).
    "logbuffer": [],
    "encoder": [],
    "decoder": [],
    "scanner": [],
    "frames": [],
}

def _keep_debug_symbols() -> bool:
    return os.environ.get("REHYDRATE_DEBUG_SYMBOLS", "") not in ("", "0")


# Appended after Python's own CFLAGS (which carry -g), so -g0 wins.
COMPILE_ARGS = ["-O3", "-fno-strict-aliasing", "-Wno-unused-function"]
LINK_ARGS: list[str] = []
if sys.platform.startswith("linux") and not _keep_debug_symbols():
    COMPILE_ARGS.append("-g0")
    LINK_ARGS.append("-s")

extensions = [
    Extension(
        f"rehydrate._core.{name}",
        [os.path.join(CORE, f"{name}.pyx")] + [os.path.join(INCLUDES, c) for c in extra],
        include_dirs=[INCLUDES],
        extra_compile_args=COMPILE_ARGS,
        extra_link_args=LINK_ARGS,
    )
    for name, extra in C_SOURCES.items()
]

setup(
    ext_modules=extensions if not BUILDING else cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        include_path=["src"],
    ),
)
