"""A zero-downtime deploy of a stateful service, end to end (docs/replication.md).

    python examples/zero_downtime_deploy.py [--dir DIR] [--seconds S] [--rate R]
                                            [--plot FILE] [--json]

The service is a small price list over HTTP that keeps its state in memory, in
a rehydrate Store in directory DIR. Its clients speak one API, which does not
change in the deploy:

    POST /write  {"key": "sku-0000042", "cents": 1999}  ->  200 {"lsn": 43, ...}
    GET  /price?key=sku-0000042[&min_lsn=43]            ->  200 {"cents": 1999, ...}

What changes is how the state is stored: v1 keeps a price as float dollars
(19.99), v2 as integer cents (1999). v2 carries an upcaster that reads v1's
records as v2's, so the new code needs no migration step and no downtime.

What this script does, in order (``deploy()`` below, step by step):

1. starts the **v1** service process, the primary of DIR;
2. starts a **load generator** (client threads in this process) writing at a
   steady rate, each write to a new key, recording each write's latency as
   its client saw it (from when it was due, so a held write counts in full)
   and what came of it;
3. starts the **v2** service process as a *standby* of DIR
   (``Store.open_standby(DIR, migrations=v2)``): it follows v1's log, upcasting
   as records arrive, and serves reads (a read of a key v1 wrote returns the
   upcast cents);
4. asks v2 to take over (``POST /promote``): v2 waits until it holds every write
   v1 acknowledged so far (``wait_for_lsn``), then ``promote(address=...)``:
   v1 holds its writes for a moment, fences itself and answers every write
   after that with 307 and v2's address; the clients follow the redirect;
5. once every client has moved to v2, stops v1 (SIGTERM, by PID; it closes
   its moved store), lets the load run on against v2, then stops the load
   and v2;
6. opens DIR read-only (with v2's upcasters) and checks that every
   acknowledged write is there with its value; prints a short report (writes,
   errors, lost writes, the client-visible write unavailability window,
   latency percentiles before, during and after the handoff) and with
   ``--plot`` draws the latency over time with the handoff marked.

The exit code is 0 only when the handoff happened and no acknowledged write
was lost. Every process started here is stopped here by its PID; the
servers bind 127.0.0.1 only.

(The services are this same file, run as ``--serve v1`` / ``--serve v2``: in a
real deploy they would be two releases of your code.)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Sequence, cast
from urllib.parse import parse_qs, urlsplit

import rehydrate
from rehydrate import HandoffError, Migrations, MovedError, ReadOnlyError, Store
from rehydrate._types import Value

ME = os.path.abspath(__file__)
TABLE = "prices"
HOST = "127.0.0.1"  # every server here binds loopback only

# The handoff's bounds (docs/replication.md, "Handoff"): how long v2 waits for
# v1 to take up its request, and how long v1 may hold writes before it gives up
# (then nothing happened: v1 stays primary and promote raises HandoffError).
PROMOTE_TIMEOUT_S = 5.0
PROMOTE_HOLD_S = 2.0
# A client gives up on one write after this long (redirects and retries
# included); such a write counts as an error, never as acknowledged.
WRITE_DEADLINE_S = 10.0
# Client threads sharing the rate: one keep-alive connection each, like a few
# application servers in front of the service.
CLIENTS = 4

perf = time.perf_counter  # CLOCK_MONOTONIC: one clock for every thread here


class DeployError(Exception):
    """A step of the deploy did not happen (said in the message)."""


# =====================================================================
# The service: v1 and v2 (what would be two releases of your code)
# =====================================================================

def v2_migrations() -> Migrations:
    """v2's view of the state: "prices" at version 2, integer cents.

    Records v1 wrote (version 1, float dollars) are upcast as they are read:
    by v2's standby as it follows v1's log, and by any later open of DIR.
    Records v2 writes are stamped version 2 and stored as they are."""
    mig = Migrations()

    @mig.upcaster(TABLE, from_version=1)
    def dollars_to_cents(value: Value) -> Value:
        # round(), not int(): 19.99 * 100 is 1998.9999999999998.
        if isinstance(value, float):
            return round(value * 100)
        return value

    return mig


class PriceService:
    """One version of the service: a store and what the HTTP API does with it.

    v1 stores float dollars; v2 stores integer cents. Both speak cents to
    their clients, so the API does not change across the deploy."""

    def __init__(self, version: str, store: Store) -> None:
        self.version = version
        self.store = store
        self.address = ""  # "http://127.0.0.1:PORT", set once the server is bound
        # Set while v2 promotes itself, and once it has: a write that reaches
        # v2 between v1's fence and v2 taking over waits for it (at most
        # PROMOTE_HOLD_S) instead of failing.
        self.promoting = threading.Event()
        self.promoted = threading.Event()

    def encode(self, cents: int) -> Value:
        return cents / 100 if self.version == "v1" else cents

    def decode(self, value: Value) -> int:
        return round(cast(float, value) * 100) if self.version == "v1" else cast(int, value)

    def write(self, key: str, cents: int, waited: bool = False
              ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """POST /write: (status, JSON body, extra headers)."""
        try:
            lsn = self.store.put(TABLE, key, self.encode(cents))
        except MovedError as e:
            # This store handed its writes over: nothing of this write was
            # logged. 307 (not 301/302) tells the client to send the same
            # POST again, to the new primary.
            if e.address:
                return 307, {"error": "moved", "address": e.address}, \
                    {"Location": e.address + "/write"}
            return 503, {"error": "moved", "detail": str(e)}, {"Retry-After": "1"}
        except ReadOnlyError:
            # A standby. A client sent here by v1's redirect may arrive just
            # before v2 has taken over (v1 fences first, then v2 takes the
            # directory): hold the write until then rather than fail it.
            if not waited and self.promoting.is_set() and self.promoted.wait(PROMOTE_HOLD_S):
                return self.write(key, cents, waited=True)
            return 503, {"error": "read_only", "role": self.store.role}, {"Retry-After": "1"}
        return 200, {"lsn": lsn, "served_by": self.version}, {}

    def read(self, key: str, min_lsn: int) -> tuple[int, dict[str, Any]]:
        """GET /price: a standby answers as well as a primary. ``min_lsn`` (the
        LSN of the client's own write) makes a standby wait until it holds it:
        read-your-writes on a replica."""
        if min_lsn and not self.store.wait_for_lsn(min_lsn, 5.0):
            return 504, {"error": "behind", "lsn": self.store.lsn, "min_lsn": min_lsn}
        table = self.store.table(TABLE)
        if key not in table:
            return 404, {"error": "no_such_key", "key": key}
        return 200, {"key": key, "cents": self.decode(table[key]), "stored": table[key],
                     "served_by": self.version, "role": self.store.role}

    def status(self) -> dict[str, Any]:
        return {"version": self.version, "role": self.store.role, "lsn": self.store.lsn,
                "epoch": self.store.epoch, "lag": self.store.lag}

    def promote(self, wait_for_lsn: int) -> tuple[int, dict[str, Any]]:
        """POST /promote (v2): catch up, then take the writes over."""
        if self.store.role != "standby":
            return 409, {"error": "not_standby", "role": self.store.role}
        # Caught up first: the clients have no primary from v1's hold until
        # this standby has applied v1's log to its end and taken over, so the
        # less there is left to apply then, the shorter that is.
        if not self.store.wait_for_lsn(wait_for_lsn, 10.0):
            return 504, {"error": "behind", "lsn": self.store.lsn, "wanted": wait_for_lsn}
        self.promoting.set()
        try:
            # address: what v1 gives its writers in MovedError (our 307).
            result = self.store.promote(timeout_s=PROMOTE_TIMEOUT_S, hold_s=PROMOTE_HOLD_S,
                                        address=self.address)
        except HandoffError as e:
            # Nothing happened: v1 is still the primary and takes the writes.
            return 409, {"error": "handoff", "reason": e.reason, "detail": str(e)}
        finally:
            if self.store.role == "primary":
                self.promoted.set()
            self.promoting.clear()
        return 200, {"promote": json.loads(json.dumps(result, default=str))}


class ServiceHTTPServer(ThreadingHTTPServer):
    """The stdlib's threaded HTTP server (what rehydrate's own ``serve_http``
    uses), carrying the service its handlers call."""

    daemon_threads = True

    def __init__(self, service: PriceService) -> None:
        super().__init__((HOST, 0), ServiceHandler)  # port 0: the kernel picks a free one
        self.service = service


class ServiceHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
    disable_nagle_algorithm = True  # small answers go out at once, not after 40 ms

    def _reply(self, code: int, body: dict[str, Any],
               headers: Optional[dict[str, str]] = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        data = json.loads(self.rfile.read(n) or b"{}")
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        service = cast(ServiceHTTPServer, self.server).service
        try:
            body = self._body()
            if self.path == "/write":
                code, answer, headers = service.write(str(body["key"]), int(body["cents"]))
                self._reply(code, answer, headers)
            elif self.path == "/promote":
                self._reply(*service.promote(int(body.get("wait_for_lsn", 0))))
            else:
                self._reply(404, {"error": "no_such_path", "path": self.path})
        except (KeyError, ValueError) as e:
            self._reply(400, {"error": "bad_request", "detail": str(e)})
        except rehydrate.RehydrateError as e:  # a typed answer, never a traceback
            self._reply(500, {"error": type(e).__name__, "detail": str(e)})

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        service = cast(ServiceHTTPServer, self.server).service
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            if url.path == "/price":
                self._reply(*service.read(query["key"], int(query.get("min_lsn", 0))))
            elif url.path == "/status":
                self._reply(200, service.status())
            else:
                self._reply(404, {"error": "no_such_path", "path": url.path})
        except (KeyError, ValueError) as e:
            self._reply(400, {"error": "bad_request", "detail": str(e)})
        except rehydrate.RehydrateError as e:
            self._reply(500, {"error": type(e).__name__, "detail": str(e)})

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: no stderr line per request


def serve(version: str, directory: str) -> int:
    """``--serve v1|v2 --dir DIR``: run one version of the service until SIGTERM.

    Its first line on stdout is ``{"port": ..., "pid": ...}``, once it takes
    requests; the deploy waits for it."""
    stop = threading.Event()
    # Handlers first: a SIGTERM during the open still ends the process cleanly.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        if version == "v1":
            store = Store.open(directory)
        else:
            # source=None: follow the directory v1 writes (same host); no LOCK
            # is taken until the promote.
            store = Store.open_standby(directory, migrations=v2_migrations())
    except (rehydrate.RehydrateError, OSError) as e:
        print(f"{version}: cannot open {directory}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    try:
        service = PriceService(version, store)
        httpd = ServiceHTTPServer(service)
        port = httpd.server_address[1]
        service.address = f"http://{HOST}:{port}"
        thread = threading.Thread(target=httpd.serve_forever, name="http", daemon=True)
        thread.start()
        print(json.dumps({"port": port, "pid": os.getpid(), "role": store.role}), flush=True)
        while not stop.wait(0.5):  # (a timeout: signals are handled between waits)
            pass
        httpd.shutdown()
        httpd.server_close()
    except OSError as e:
        print(f"{version}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        # A moved store (v1 after the handoff) closes like any other: its
        # log was closed and its LOCK released at the fence.
        store.close()
    return 0


# =====================================================================
# The clients: a load generator that follows redirects
# =====================================================================

@dataclass
class Write:
    """One write as its client saw it (times: ``perf()`` seconds)."""

    i: int
    key: str
    cents: int
    due: float  # when the schedule said to send it
    sent: float = 0.0  # when it was first sent
    done: float = 0.0  # when it was acknowledged (or given up on)
    ok: bool = False
    served_by: str = ""  # "v1" or "v2": the version that acknowledged it
    lsn: int = 0
    redirects: int = 0
    error: str = ""

    @property
    def latency(self) -> float:
        # From when it was due, not when it was sent: a write queued behind a
        # held one waited too (no "coordinated omission").
        return self.done - self.due


class Client:
    """One keep-alive connection to the service's primary, wherever it is.

    A 307 names the new primary: the client switches to it for good and
    sends the same write again there. A 503 or a broken connection is
    retried (after a pause) until WRITE_DEADLINE_S. Re-sending is safe here
    because a write is a put of a fixed value: doing it twice changes nothing."""

    def __init__(self, base: str, timeout_s: float = 5.0) -> None:
        self.base = base
        self.timeout_s = timeout_s
        self.conn: Optional[http.client.HTTPConnection] = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            u = urlsplit(self.base)
            self.conn = http.client.HTTPConnection(u.hostname or HOST, u.port,
                                                   timeout=self.timeout_s)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, body: Optional[dict[str, Any]] = None
                ) -> tuple[int, dict[str, Any], Optional[str]]:
        """One request: (status, JSON answer, Location header)."""
        conn = self._connection()
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            answer = json.loads(resp.read() or b"{}")
            return resp.status, answer, resp.getheader("Location")
        except (OSError, http.client.HTTPException):
            self.close()  # a fresh connection next time
            raise

    def write(self, w: Write) -> None:
        w.sent = perf()
        deadline = w.sent + WRITE_DEADLINE_S
        while True:
            try:
                status, answer, location = self.request(
                    "POST", "/write", {"key": w.key, "cents": w.cents})
            except (OSError, http.client.HTTPException) as e:
                status, answer, location = 0, {"error": type(e).__name__}, None
            if status == 200:
                # ok last: another thread may read this write as soon as ok is set
                w.lsn, w.served_by, w.error, w.ok = answer["lsn"], answer["served_by"], "", True
                break
            if status == 307 and location and w.redirects < 5:  # (never a loop)
                # The old primary handed over: follow it, from now on.
                u = urlsplit(location)
                self.close()
                self.base = f"{u.scheme}://{u.netloc}"
                w.redirects += 1
                continue
            w.error = str(answer.get("error", status))
            if status not in (0, 503) or perf() > deadline:
                break
            time.sleep(0.001)
        w.done = perf()


class LoadGenerator:
    """``rate`` writes/s shared by CLIENTS threads: write i is due at
    ``i / rate`` s and goes to the next free client; each write sets a new key
    (``sku-<i>``), so the final state says exactly which writes it holds."""

    def __init__(self, base: str, rate: int) -> None:
        self.base, self.rate = base, rate
        self.writes: list[Write] = []
        self.t0 = 0.0
        self._next = 0
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.clients = [Client(base) for _ in range(CLIENTS)]
        self._threads = [threading.Thread(target=self._run, args=(c,), name=f"client-{n}",
                                          daemon=True) for n, c in enumerate(self.clients)]
        self.first_ack_by: dict[str, threading.Event] = {"v1": threading.Event(),
                                                         "v2": threading.Event()}
        self.last_acked_lsn = 0

    def start(self) -> None:
        self.t0 = perf()
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._halt.set()
        for t in self._threads:
            t.join(timeout=WRITE_DEADLINE_S + 5)

    def _take(self) -> Write:
        with self._lock:
            i = self._next
            self._next += 1
            w = Write(i=i, key=f"sku-{i:07d}", cents=100 + (i * 7919) % 100_000,
                      due=self.t0 + i / self.rate)
            self.writes.append(w)
            return w

    def on(self, base: str) -> int:
        """How many clients send their writes to ``base`` now."""
        return sum(1 for c in self.clients if c.base == base)

    def _run(self, client: Client) -> None:
        try:
            while not self._halt.is_set():
                w = self._take()
                delay = w.due - perf()
                if delay > 0:
                    time.sleep(delay)
                client.write(w)
                if w.ok:
                    with self._lock:
                        self.last_acked_lsn = max(self.last_acked_lsn, w.lsn)
                    self.first_ack_by[w.served_by].set()
        finally:
            client.close()


# =====================================================================
# The deploy
# =====================================================================

@dataclass
class Service:
    """A service process started here (and stopped here, by its PID)."""

    version: str
    proc: subprocess.Popen[bytes]
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"


def start_service(version: str, directory: str, timeout_s: float = 60.0) -> Service:
    """Start ``--serve VERSION`` and wait for its "ready" line (the port)."""
    proc = subprocess.Popen([sys.executable, ME, "--serve", version, "--dir", directory],
                            stdout=subprocess.PIPE)  # stderr: ours, for its error messages
    svc = Service(version, proc)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else b""
    if not line:
        stop_service(svc)
        raise DeployError(f"{version} did not start (exit code {proc.returncode}); "
                          f"its message is above")
    svc.port = int(json.loads(line)["port"])
    return svc


def stop_service(svc: Service, timeout_s: float = 15.0) -> None:
    """SIGTERM by PID (the service closes its store and exits), then wait;
    SIGKILL only if it does not go."""
    if svc.proc.poll() is None:
        svc.proc.send_signal(signal.SIGTERM)
    try:
        svc.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        svc.proc.kill()
        svc.proc.wait()
    if svc.proc.stdout is not None:
        svc.proc.stdout.close()


def call(base: str, method: str, path: str,
         body: Optional[dict[str, Any]] = None) -> tuple[int, dict[str, Any]]:
    """One request from the deploy tool (its own connection)."""
    # The promote may take up to its catch-up, its timeout and its hold.
    client = Client(base, timeout_s=10.0 + PROMOTE_TIMEOUT_S + PROMOTE_HOLD_S + 5.0)
    try:
        status, answer, _ = client.request(method, path, body)
        return status, answer
    except (OSError, http.client.HTTPException) as e:
        raise DeployError(f"{method} {base}{path}: {type(e).__name__}: {e}") from e
    finally:
        client.close()


def deploy(directory: str, seconds: float, rate: int) -> dict[str, Any]:
    """Run the whole story; returns what happened (the report's material)."""
    out: dict[str, Any] = {"dir": directory, "seconds": seconds, "rate": rate,
                           "clients": CLIENTS, "handoff": False, "events": {}}
    services: list[Service] = []
    load: Optional[LoadGenerator] = None

    def event(name: str) -> None:  # when each step happened, s from the load's start
        assert load is not None
        out["events"][name] = perf() - load.t0

    try:
        # 1. v1, the primary.
        v1 = start_service("v1", directory)
        services.append(v1)
        progress(f"v1 is up on {v1.base} (pid {v1.proc.pid}), the primary of {directory}")

        # 2. The load, against v1.
        load = LoadGenerator(v1.base, rate)
        load.start()
        event("load started")
        progress(f"load: {rate} writes/s from {CLIENTS} clients")
        if not load.first_ack_by["v1"].wait(10):
            raise DeployError("v1 acknowledged no write within 10 s")
        time.sleep(max(0.0, seconds * 0.25 - (perf() - load.t0)))

        # 3. v2, a standby of the same directory, with its upcasters.
        event("v2 starting")
        v2 = start_service("v2", directory)
        services.append(v2)
        event("v2 standby up")
        status, st = call(v2.base, "GET", "/status")
        progress(f"v2 is up on {v2.base} (pid {v2.proc.pid}) as a {st.get('role')}, "
                 f"lag {st.get('lag', {}).get('records')} records")
        # A read on the standby: a key v1 wrote, read back in v2's shape.
        # min_lsn: the standby answers once it holds that write.
        # (The newest one: the standby may not hold it yet, and waits for it.)
        newest = max((w for w in list(load.writes) if w.ok and w.served_by == "v1"),
                    key=lambda w: w.lsn)
        status, got = call(v2.base, "GET", f"/price?key={newest.key}&min_lsn={newest.lsn}")
        if status != 200:
            raise DeployError(f"v2 (standby) could not read {newest.key}: {status} {got}")
        out["standby_read"] = {"key": newest.key, "cents_written": newest.cents,
                               "v1_stored_dollars": newest.cents / 100, "v2_read": got}
        progress(f"v2 (standby) reads {newest.key} = {got['cents']} cents "
                 f"(v1 stored {newest.cents / 100} dollars; v2 holds {got['stored']!r})")

        # 4. The handoff: v2 catches up to what v1 has acknowledged, then
        #    promotes itself; the clients follow v1's redirects to v2.
        time.sleep(max(0.0, seconds * 0.5 - (perf() - load.t0)))
        event("promote requested")
        status, res = call(v2.base, "POST", "/promote", {"wait_for_lsn": load.last_acked_lsn})
        event("promote returned")
        if status != 200:
            raise DeployError(f"v2 did not take over: {status} {res}")
        out["promote"] = res["promote"]
        out["handoff"] = True
        progress(f"v2 promoted: epoch {res['promote'].get('epoch')}, LSN "
                 f"{res['promote'].get('lsn')}, {res['promote'].get('total_s', 0) * 1e3:.1f} ms")
        if not load.first_ack_by["v2"].wait(WRITE_DEADLINE_S):
            raise DeployError("no write reached v2 after the handoff")

        # 5. Drain, then stop v1 (SIGTERM by PID). A client learns where v2
        #    is from v1's 307, at its next write: v1 stays up until every
        #    client has been told (as a load balancer drains an instance).
        drain_until = perf() + WRITE_DEADLINE_S + 2 * CLIENTS / rate
        while load.on(v2.base) < CLIENTS:
            if perf() > drain_until:
                raise DeployError(f"{CLIENTS - load.on(v2.base)} client(s) never moved to v2")
            time.sleep(0.005)
        event("clients moved")
        stop_service(v1)
        services.remove(v1)
        event("v1 stopped")
        progress(f"every client moved to v2; v1 stopped (exit code {v1.proc.returncode})")
        time.sleep(max(0.0, seconds - (perf() - load.t0)))
        load.stop()
        event("load stopped")
        status, st = call(v2.base, "GET", "/status")
        out["v2_status"] = st
        stop_service(v2)
        services.remove(v2)
        progress(f"v2 stopped (exit code {v2.proc.returncode}) at LSN {st.get('lsn')}")
        if v1.proc.returncode or v2.proc.returncode:
            raise DeployError(f"a service exited with an error: v1 {v1.proc.returncode}, "
                              f"v2 {v2.proc.returncode}")

        # 6. What the clients were told was written, against what is in DIR.
        out.update(check_writes(directory, load.writes))
        out.update(summarize(load))
        return out
    finally:
        if load is not None:
            load.stop()
        for svc in services:
            stop_service(svc)


def check_writes(directory: str, writes: list[Write]) -> dict[str, Any]:
    """Open DIR read-only, as v2 (its upcasters read v1's records), and look
    up every write: an acknowledged one that is missing or has another value
    is lost. Writes that failed were never acknowledged: either way is right
    for them."""
    with Store.open(directory, readonly=True, migrations=v2_migrations()) as store:
        table = store.table(TABLE)
        lost = [w.key for w in writes if w.ok and table.get(w.key) != w.cents]
        sent = {w.key for w in writes}
        unexpected = sum(1 for k in table.keys() if k not in sent)
        return {"lost": len(lost), "lost_keys": lost[:10], "unexpected_keys": unexpected,
                "keys_in_state": len(table), "final_lsn": store.lsn}


# =====================================================================
# The report
# =====================================================================

def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no data."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def summarize(load: LoadGenerator) -> dict[str, Any]:
    """The unavailability window and the latency before, during and after.

    The window, from the clients' side: from the moment the first write that
    v1 did not acknowledge was sent (held by v1, then redirected) to the
    moment v2 acknowledged its first write. A write is "during" if it was
    waiting or due in that window, "before" if it was done before it,
    "after" if it was due after it."""
    t0 = load.t0
    writes = [w for w in load.writes if w.sent]  # (the last ones may never have been sent)
    acked = [w for w in writes if w.ok]
    out: dict[str, Any] = {
        "sent": len(writes), "acknowledged": len(acked), "errors": len(writes) - len(acked),
        "acknowledged_by": {v: sum(1 for w in acked if w.served_by == v) for v in ("v1", "v2")},
        "redirected": sum(1 for w in writes if w.redirects),
        "error_kinds": sorted({w.error for w in writes if not w.ok}),
    }
    span = max((w.done for w in writes), default=t0) - t0
    out["achieved_rate"] = len(writes) / span if span > 0 else 0.0
    not_v1 = [w for w in writes if w.served_by != "v1"]
    by_v2 = [w for w in acked if w.served_by == "v2"]
    if not not_v1 or not by_v2:
        out["window_ms"] = None
        return out
    start = min(w.sent for w in not_v1)
    end = min(w.done for w in by_v2)
    out["window_ms"] = (end - start) * 1e3
    out["window"] = {"start_s": start - t0, "end_s": end - t0}
    phases: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    for w in writes:
        phase = "before" if w.done < start else "during" if w.due <= end else "after"
        phases[phase].append(w.latency * 1e3)
    out["latency_ms"] = {name: {"n": len(xs), "p50": percentile(xs, 50),
                                "p99": percentile(xs, 99), "max": max(xs, default=float("nan"))}
                         for name, xs in phases.items()}
    # For the plot: (due, latency, who acknowledged) per write.
    out["points"] = [[round(w.due - t0, 6), round(w.latency * 1e3, 4), w.served_by or "error"]
                     for w in writes]
    return out


def report_text(res: dict[str, Any]) -> str:
    by = res.get("acknowledged_by", {})
    where = res["dir"] if res.get("dir_kept") else "a temporary directory (removed)"
    lines = [f"zero-downtime deploy v1 -> v2 of {where}: {res['rate']} writes/s "
             f"({res.get('achieved_rate', 0):.0f} achieved) for {res['seconds']:g} s",
             f"  writes sent {res.get('sent', 0)}, acknowledged {res.get('acknowledged', 0)} "
             f"(v1 {by.get('v1', 0)}, v2 {by.get('v2', 0)}), errors {res.get('errors', 0)}, "
             f"redirected {res.get('redirected', 0)}",
             f"  lost (acknowledged, not in v2's state): {res.get('lost', '?')}; "
             f"keys in the state {res.get('keys_in_state', '?')}"]
    p = res.get("promote") or {}
    if res.get("handoff"):
        lines.append(f"  handoff: v2 promoted at LSN {p.get('lsn')} (epoch {p.get('epoch')}) "
                     f"in {p.get('total_s', 0) * 1e3:.1f} ms")
    else:
        lines.append("  handoff: did not happen")
    if res.get("window_ms") is not None:
        lines.append(f"  write unavailability (first write held on v1 -> first write "
                     f"acknowledged by v2): {res['window_ms']:.1f} ms")
        lines.append(f"  {'latency (ms)':<14}{'n':>7}{'p50':>9}{'p99':>9}{'max':>9}")
        for name, s in res["latency_ms"].items():
            lines.append(f"  {name:<14}{s['n']:>7}{s['p50']:>9.2f}{s['p99']:>9.2f}"
                         f"{s['max']:>9.2f}")
    read = res.get("standby_read")
    if read:
        lines.append(f"  read on v2 while standby: {read['key']} = {read['v2_read']['cents']} "
                     f"cents (v1 stored {read['v1_stored_dollars']} dollars)")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: str) -> None:
    """Client-visible write latency over time, the handoff marked; below, a
    close-up of the handoff."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    pts = res.get("points", [])
    w = res.get("window")
    fig, (ax, zoom) = plt.subplots(2, 1, figsize=(10, 6.5))
    colors = {"v1": "tab:blue", "v2": "tab:green", "error": "tab:red"}
    for a in (ax, zoom):
        for who, color in colors.items():
            xs = [p[0] for p in pts if p[2] == who]
            ys = [max(p[1], 1e-3) for p in pts if p[2] == who]
            if xs:
                a.scatter(xs, ys, s=3, color=color, label=f"acknowledged by {who}"
                          if who != "error" else "error", rasterized=True)
        if w:
            a.axvspan(w["start_s"], w["end_s"], color="tab:red", alpha=0.25,
                      label=f"unavailable {res['window_ms']:.1f} ms")
            a.axvline(w["start_s"], color="tab:red", lw=0.8)
        a.set_yscale("log")
        a.set_ylabel("write latency (ms)")
    # The deploy's steps. Starting v2 (a Python process importing and
    # opening) competes with v1 and the clients for the CPUs: the spikes there
    # are that, not the handoff.
    for name, t in res.get("events", {}).items():
        if name in ("v2 starting", "v2 standby up", "promote requested", "v1 stopped"):
            for a in (ax, zoom):
                a.axvline(t, color="grey", ls="--", lw=0.8)
                a.annotate(name, (t, 0.98), xycoords=("data", "axes fraction"), rotation=90,
                           va="top", ha="right", fontsize=8, color="dimgrey",
                           annotation_clip=True, zorder=5,
                           bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8,
                                 "pad": 1})
    ax.set_title(f"zero-downtime deploy v1 -> v2: {res['rate']} writes/s, "
                 f"{res.get('acknowledged', 0)} acknowledged, {res.get('lost', '?')} lost")
    ax.legend(loc="upper left", fontsize=8, markerscale=3)
    if w:
        # +- 40x the window (at least 50 ms) around the handoff.
        half = max(0.05, 40 * (w["end_s"] - w["start_s"]))
        zoom.set_xlim(w["start_s"] - half, w["end_s"] + half)
        zoom.set_title("the handoff, close up", fontsize=10)
    zoom.set_xlabel("time the write was due (s from the load's start); "
                    "latency = acknowledged - due")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# =====================================================================
# main
# =====================================================================

def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--dir", help="the store's directory (new or empty; "
                   "default: a temporary one, removed at the end)")
    p.add_argument("--seconds", type=float, default=4.0, help="how long the load runs")
    p.add_argument("--rate", type=int, default=2000, help="writes/s")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of the latency over time")
    p.add_argument("--json", action="store_true",
                   help="print the results as JSON on stdout (progress stays on stderr)")
    p.add_argument("--serve", choices=["v1", "v2"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        if not args.dir:
            p.error("--serve needs --dir")
        return serve(args.serve, args.dir)
    if args.seconds < 1 or args.rate < 1:
        p.error("--seconds must be at least 1 and --rate positive")
    if args.plot:
        try:
            import matplotlib  # noqa: F401 - checked before anything starts
        except ImportError:
            print("error: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 1

    temporary = args.dir is None
    directory = tempfile.mkdtemp(prefix="rh-deploy-") if temporary else args.dir
    if not temporary and os.path.exists(directory) and os.listdir(directory):
        print(f"error: {directory} is not empty: the deploy starts from a new store",
              file=sys.stderr)
        return 1
    try:
        res = deploy(directory, args.seconds, args.rate)
    except (DeployError, rehydrate.RehydrateError, OSError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    finally:
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
    res["dir_kept"] = not temporary
    res["ok"] = bool(res["handoff"] and res.get("lost") == 0 and res.get("acknowledged", 0) > 0)
    if args.plot:
        plot(res, args.plot)
        res["plot"] = args.plot
    if args.json:
        res.pop("points", None)  # (the plot's raw data: long, and in the PNG)
        print(json.dumps(res, indent=1, default=str))
    else:
        print(report_text(res))
        if args.plot:
            print(f"  plot: {args.plot}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
