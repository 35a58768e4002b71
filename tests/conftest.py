"""Every test runs twice: against the native core and against the pure twin.

The ``core`` fixture (autouse) selects the implementation for the test's
duration; subprocess tests pass ``core_env`` to the child so it uses the same.
A test that is about one core only takes ``core`` and skips the other.
"""

import os

import pytest

from rehydrate import _backend

CORES = ("native", "pure")


@pytest.fixture(params=CORES, autouse=True)
def core(request):
    with _backend.use(request.param) as module:
        yield module


@pytest.fixture
def core_name(core):
    return core.IMPLEMENTATION


@pytest.fixture
def core_env(core):
    """Environment for a child process that must use the same core."""
    env = dict(os.environ)
    if core.IMPLEMENTATION == "pure":
        env["REHYDRATE_NO_EXTENSIONS"] = "1"
    else:
        env.pop("REHYDRATE_NO_EXTENSIONS", None)
    return env


@pytest.fixture
def store_dir(tmp_path):
    return str(tmp_path / "state")
