"""Builds the native core ``rehydrate._core`` from ``src/rehydrate/_core``.

The core's sources sit in its package: each ``.pyx`` with the ``.pxd`` that
shares its cdef functions and classes with the other modules (cimported
relatively, ``from .codec cimport ...``), and ``includes/`` with the C
headers, the hand-written C sources and the ``.pxd`` declaring each header.
Cython names every module after its place in the package, so the sources
need no mirror path. Only the ``.pyi``, ``.pxd`` and headers are installed
beside the extensions, never the ``.c`` Cython generates (pyproject.toml).

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


if any(cmd in sys.argv for cmd in ("build_ext", "build", "bdist_wheel", "install", "develop",
                                   "editable_wheel")):
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

extensions = [
    Extension(
        f"rehydrate._core.{name}",
        [os.path.join(CORE, f"{name}.pyx")] + [os.path.join(INCLUDES, c) for c in extra],
        include_dirs=[INCLUDES],
        extra_compile_args=["-O3", "-fno-strict-aliasing", "-Wno-unused-function"],
    )
    for name, extra in C_SOURCES.items()
]

setup(
    ext_modules=cythonize(
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
