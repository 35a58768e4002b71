"""A real S3-protocol server on 127.0.0.1 for the object-storage tests.

``start_s3_server(workdir)`` runs moto's standalone server (``moto_server``,
from the ``moto[server]`` test dependency) as a child process on a free port
and returns once it answers HTTP. Tests reach it through
``pyarrow.fs.S3FileSystem`` with an endpoint override, either built here
(``S3Server.filesystem()``) or from a URI (``S3Server.uri()``), which is what
library code given an ``s3://`` URI does (``pyarrow.fs.FileSystem.from_uri``).

Credentials: the AWS SDK inside pyarrow wants some; moto accepts any.
``s3_env()`` gives the environment the tests run under (the ``s3_server``
fixture in tests/conftest.py sets it for the session): fixed keys, and the EC2
instance-metadata lookup turned off (without it the SDK can spend seconds
probing 169.254.169.254 for credentials or a region).

Retries and timeouts, as measured against this server and
tests/helpers/s3_faults.py with pyarrow 26 (AWS SDK for C++ 1.11, curl);
tests/test_s3_infra.py pins them down:

* ``pyarrow.fs.S3FileSystem(...)`` built in Python defaults to
  ``retry_strategy=AwsStandardS3RetryStrategy(max_attempts=3)``: a 500
  (InternalError), a 503 (SlowDown), a connection reset without a response,
  a refused connection or a request timeout is tried 3 times in all, with a
  jittered backoff between tries (a persistent 500 costs about 0.5-1.5 s, a
  persistent 503 up to about 3 s: throttling backs off longer), then raised as
  ``OSError``. One injected fault is therefore invisible to the caller.
  ``retry_strategy=AwsStandardS3RetryStrategy(max_attempts=1)`` surfaces the
  first failure at once; ``S3Server.filesystem(retries=1)`` does that.
* ``pyarrow.fs.FileSystem.from_uri("s3://...")`` builds its options in C++
  without a retry strategy, and arrow then installs its own
  ``ConnectRetryStrategy``: every error the SDK marks retryable (5xx,
  SlowDown, a reset, refused or timed-out connection) is retried every 200 ms
  until 6 s have gone by (about 30 tries). A persistent fault, or a stopped
  server, costs about 6 s per call through a URI. The URI cannot change that:
  the query parameters ``from_uri`` accepts are ``region``, ``scheme``,
  ``endpoint_override``, ``allow_bucket_creation``, ``allow_bucket_deletion``
  and (pyarrow 26; older ones fewer) ``allow_delayed_open``,
  ``tls_ca_file_path``, ``tls_ca_dir_path``, ``tls_verify_certificates`` and
  ``smart_defaults`` (the SDK's defaults mode); anything else is rejected
  ("Unexpected query parameter in S3 URI"). There is no retry,
  connect-timeout or request-timeout parameter. Code that wants
  short retries or timeouts has to build ``S3FileSystem`` itself
  (``retry_strategy=``, ``connect_timeout=``, ``request_timeout=``, in
  seconds), taking the bucket, region and endpoint from the URI. Tests that go
  through a URI should inject a bounded number of faults (``times=N`` on the
  proxy's rules, N well under 30) so that the retries succeed.
* The request timeout (SDK default 3 s) is curl's low-speed limit, in whole
  seconds (``request_timeout=0.5`` and ``1.5`` both give 1 s), and applies
  on Linux too, although pyarrow's docstring says Windows and macOS only: an
  answer slower than that is abandoned ("Timeout was reached") and retried
  like a reset.
* A ranged read smaller than an S3 error's XML body (a few hundred bytes)
  that gets a 5xx is not retried: pyarrow reads into a buffer of the range's
  size, the SDK writes the error body there too, overflows it, and reports a
  non-retryable INTERNAL_FAILURE "Failed to flush response stream".
* The environment's AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 set the endpoint
  for ``from_uri`` (the URI's ``endpoint_override`` wins); the fixture unsets
  them.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import pyarrow.fs as pafs

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"

START_DEADLINE_S = 20.0
STOP_DEADLINE_S = 10.0
# Tries at a free port: another process may take the port between our probe
# and moto's bind.
START_TRIES = 5


def s3_env() -> dict[str, str]:
    """The environment pyarrow's S3 client needs to talk to the test server.

    Any keys do for moto; the instance-metadata lookup is turned off so that a
    missing region or credential does not stall on a network probe. The AWS
    config and credential files are pointed away from the user's own.
    """
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


# Variables that would redirect or re-authenticate the client if the
# environment happened to have them; the fixture removes them.
S3_ENV_UNSET = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def moto_command(port: int) -> list[str]:
    """The command line that serves S3 on 127.0.0.1:port."""
    script = Path(sys.executable).parent / "moto_server"
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def answers_http(port: int, timeout: float = 1.0) -> bool:
    """Whether an HTTP server on 127.0.0.1:port answers a request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


class S3Server:
    """A running moto S3 server (a child process); see ``start_s3_server``."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: str) -> None:
        self._proc = proc
        self.pid: int = proc.pid
        self.port: int = port
        self.endpoint: str = f"127.0.0.1:{port}"
        self.log_path: str = log_path

    def __repr__(self) -> str:
        return f"S3Server(pid={self.pid}, endpoint={self.endpoint!r})"

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def running(self) -> bool:
        return self._proc.poll() is None

    def uri(self, bucket: str, prefix: str = "", endpoint: str | None = None) -> str:
        """An ``s3://`` URI for ``bucket/prefix`` on this server, or on
        ``endpoint`` ("HOST:PORT", e.g. a FaultProxy's) in front of it, that
        ``pyarrow.fs.FileSystem.from_uri`` resolves without further options."""
        path = f"{bucket}/{prefix.strip('/')}" if prefix.strip("/") else bucket
        return (f"s3://{path}?endpoint_override={endpoint or self.endpoint}"
                f"&scheme=http&region={REGION}")

    def filesystem(self, endpoint: str | None = None, retries: int | None = None,
                   connect_timeout: float | None = None) -> pafs.S3FileSystem:
        """An S3FileSystem on this server (or on ``endpoint`` in front of it)
        that may create and delete buckets. ``retries`` is the number of
        attempts in all (pyarrow's default: 3); 1 means no retry."""
        kwargs: dict[str, object] = {}
        if retries is not None:
            kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=retries)
        if connect_timeout is not None:
            kwargs["connect_timeout"] = connect_timeout
        return pafs.S3FileSystem(
            access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION, scheme="http",
            endpoint_override=endpoint or self.endpoint,
            allow_bucket_creation=True, allow_bucket_deletion=True, **kwargs)

    def make_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_DEADLINE_S;
        reaps the child. Idempotent."""
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL and reap. Idempotent."""
        self._signal(signal.SIGKILL)
        self._proc.wait()


def start_s3_server(workdir: str, deadline_s: float = START_DEADLINE_S) -> S3Server:
    """Start moto's S3 server on a free port of 127.0.0.1; return once it
    answers HTTP. Its output goes to ``workdir/moto-PORT.log``. Raises
    RuntimeError (with the log's tail) if no try comes up in time."""
    os.makedirs(workdir, exist_ok=True)
    env = dict(os.environ)
    env.update(s3_env())
    failures: list[str] = []
    for _ in range(START_TRIES):
        port = free_port()
        log_path = os.path.join(workdir, f"moto-{port}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(moto_command(port), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
        server = S3Server(proc, port, log_path)
        deadline = time.monotonic() + deadline_s
        while proc.poll() is None and time.monotonic() < deadline:
            if answers_http(port):
                return server
            time.sleep(0.05)  # between polls of the condition above
        server.kill()
        with open(log_path, "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace")
        failures.append(f"port {port}, exit {proc.returncode}: {tail}")
    raise RuntimeError("moto S3 server did not come up:\n" + "\n---\n".join(failures))
