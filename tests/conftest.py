"""Every test runs twice: against the native core and against the pure twin.

The ``core`` fixture (autouse) selects the implementation for the test's
duration; subprocess tests pass ``core_env`` to the child so it uses the same.
A test that is about one core only takes ``core`` and skips the other.
"""

import hashlib
import itertools
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


# -- the S3-protocol server for the object-storage tests ----------------------
# One moto server per session (per xdist worker: each has its own session),
# tests/helpers/s3_server.py; a fresh bucket per test; a fault-injecting proxy
# in front of it per test (tests/helpers/s3_faults.py). A test that stops or
# kills a server starts its own with start_s3_server(tmp_path) instead.

_bucket_counter = itertools.count()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The session's S3 server. While it runs, the environment carries the
    test credentials (helpers.s3_server.s3_env()), so library code that
    resolves an s3:// URI with pyarrow.fs.FileSystem.from_uri works as is."""
    from helpers.s3_server import S3_ENV_UNSET, s3_env, start_s3_server

    mp = pytest.MonkeyPatch()
    for name, value in s3_env().items():
        mp.setenv(name, value)
    for name in S3_ENV_UNSET:
        mp.delenv(name, raising=False)
    try:
        server = start_s3_server(str(tmp_path_factory.mktemp("s3")))
        try:
            yield server
        finally:
            server.stop()
    finally:
        mp.undo()


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A new, empty bucket on the session's server, named after the test
    (a hash of its node id) and a counter: valid as an S3 bucket name."""
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    name = f"test-{digest}-{next(_bucket_counter)}"
    s3_server.make_bucket(name)
    return name


@pytest.fixture
def fault_proxy(s3_server):
    """A FaultProxy in front of the session's server, for this test only."""
    from helpers.s3_faults import FaultProxy

    with FaultProxy(s3_server.port) as proxy:
        yield proxy
