"""Selects the core: the native extension, or the pure twin.

``REHYDRATE_NO_EXTENSIONS=1`` selects the pure twin. Without it, a missing or
broken extension is an ImportError: never a silent fallback, because a store
that quietly runs ten times slower is a production incident.
"""

from __future__ import annotations

import contextlib
import importlib
import os

_NAMES = {"native": "rehydrate._core", "pure": "rehydrate._pure"}


def _default_name() -> str:
    return "pure" if os.environ.get("REHYDRATE_NO_EXTENSIONS", "") not in ("", "0") else "native"


_current = None


def load(name: str):
    """The core module called ``name`` ("native" or "pure")."""
    if name not in _NAMES:
        raise ValueError(f"unknown core {name!r}; expected 'native' or 'pure'")
    try:
        return importlib.import_module(_NAMES[name])
    except ImportError as e:
        if name == "native":
            raise ImportError(
                "rehydrate's native core (rehydrate._core) is not built or does not "
                "load; reinstall with a C compiler and Cython available, or set "
                f"REHYDRATE_NO_EXTENSIONS=1 for the slow pure-Python core. Cause: {e}"
            ) from e
        raise


def core():
    """The core in use (chosen once from the environment, or by ``use``)."""
    global _current
    if _current is None:
        _current = load(_default_name())
    return _current


@contextlib.contextmanager
def use(name: str):
    """Run a block with the named core selected (tests parametrize with it)."""
    global _current
    previous = _current
    _current = load(name)
    try:
        yield _current
    finally:
        _current = previous
