"""examples/redis_stream_consumer.py against a real redis-server: every
entry applied exactly once across SIGKILLs at seeded random points, a store
restored from an older copy catching up from its own offset, a clean stop on
SIGTERM, and the stream-ID-to-offset mapping."""

import importlib.util
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter

import pytest

from rehydrate import ConfigError, Store
from rehydrate.bench.baselines import BaselineError, RedisServer

redis = pytest.importorskip("redis")

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "redis_stream_consumer.py")
HAVE_REDIS = shutil.which("redis-server") is not None
NO_REDIS = "redis-server is not installed (Debian's redis-server; `make redis` installs it)"
STREAM, GROUP = "events", "counters"
SOURCE = f"redis-stream:{STREAM}"


def _load_example():
    spec = importlib.util.spec_from_file_location("redis_stream_consumer", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ex = _load_example()


# ------------------------------------------------------------ the offset mapping
def test_offsets_keep_the_order_of_stream_ids():
    rng = random.Random(5)
    pairs = sorted({(rng.randrange(ex.MAX_MS + 1), rng.randrange(ex.MAX_SEQ + 1))
                    for _ in range(2000)} | {(0, 0), (0, 1), (1, 0), (ex.MAX_MS, ex.MAX_SEQ)})
    ids = [f"{ms}-{seq}" for ms, seq in pairs]
    offsets = [ex.offset_of(i) for i in ids]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert [ex.stream_id_of(o) for o in offsets] == ids
    assert 0 <= offsets[0] and offsets[-1] == 2**63 - 1  # all of int64's positive half


@pytest.mark.parametrize("bad", [f"0-{2**20}", f"{2**43}-0", "-1-0", "12", "x-1", ""])
def test_an_id_outside_the_mapping_is_refused(bad):
    with pytest.raises(ConfigError):
        ex.offset_of(bad)


# ------------------------------------------------------------ a real Redis
@pytest.fixture
def redis_url(tmp_path):
    if not HAVE_REDIS:
        pytest.skip(NO_REDIS)
    directory = tmp_path / "redis"
    directory.mkdir()
    for attempt in range(3):  # a free port taken meanwhile by another test: try another
        server = RedisServer(str(directory), aof=False)
        try:
            server.wait_ready(deadline_s=30)
            break
        except BaselineError:
            server.stop()
            if attempt == 2:
                raise
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()  # by PID


def produce(url, n, keys, seed, junk_every=0):
    """XADD n entries (seeded); their IDs and the totals they add up to."""
    rng = random.Random(seed)
    r = redis.Redis.from_url(url, decode_responses=True)
    totals, rejected, entries = Counter(), {}, []
    for i in range(n):
        if junk_every and i % junk_every == junk_every - 1:
            entries.append({"note": f"not a counter {i}"})
        else:
            key, delta = f"k{rng.randrange(keys)}", rng.randint(-3, 9)
            entries.append({"key": key, "delta": str(delta)})
    pipe = r.pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(STREAM, fields)
    ids = pipe.execute()
    for sid, fields in zip(ids, entries):
        if "key" in fields:
            totals[fields["key"]] += int(fields["delta"])
        else:
            rejected[sid] = fields
    r.close()
    return ids, totals, rejected


class Consumer:
    """The example as a child process; its stdout read on a thread, so a
    wait for a line has a deadline."""

    def __init__(self, url, store, env, *extra):
        self.proc = subprocess.Popen(
            [sys.executable, EXAMPLE, "--redis-url", url, "--stream", STREAM, "--group", GROUP,
             "--store", store, "--consumer", "c1", *extra],
            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # EOF

    def next_line(self, timeout_s=60.0):
        try:
            return self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no line from the consumer within {timeout_s} s") from None

    def finish(self, timeout_s=120.0):
        """(exit code, stderr) once the process has exited."""
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._reader.join()
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc, err


def applied_id(line):
    assert line.startswith("applied "), line
    return line.split()[1]


def state(path):
    """(counters, rejected, offset) of the store at ``path``."""
    with Store.open(path, readonly=True) as s:
        tables = s.tables()
        counters = s.table("counters").to_dict() if "counters" in tables else {}
        rejected = s.table("rejected").to_dict() if "rejected" in tables else {}
        return counters, rejected, s.offsets.get(SOURCE)


def group_info(url):
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        (info,) = r.xinfo_groups(STREAM)
        return info
    finally:
        r.close()


@pytest.mark.parametrize("sync", ["always", "interval"])
def test_every_entry_applied_once_across_sigkills(tmp_path, redis_url, core_env, sync):
    n, kills = 5000, 6
    ids, totals, rejected = produce(redis_url, n, keys=300, seed=7, junk_every=997)
    index = {sid: i for i, sid in enumerate(ids)}
    fields = {}
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for sid, f in r.xrange(STREAM):
        fields[sid] = f
    r.close()

    def prefix_state(upto):
        c, rej = Counter(), {}
        for sid in ids[:upto]:
            f = fields[sid]
            if "key" in f:
                c[f["key"]] += int(f["delta"])
            else:
                rej[sid] = f
        return dict(c), rej

    path = str(tmp_path / "store")
    rng = random.Random(f"kills-{sync}")
    thresholds = sorted(rng.sample(range(1, n - 500), kills))
    acked = -1  # index of the last entry a run said it acknowledged
    for threshold in thresholds:
        c = Consumer(redis_url, path, core_env, "--sync", sync, "--count", "50")
        ready = c.next_line()
        assert ready.startswith("ready offset="), (ready, c.proc.stderr.read())
        while True:
            line = c.next_line()
            assert line is not None, c.finish()
            acked = index[applied_id(line)]
            if acked >= threshold:
                break
        c.proc.send_signal(signal.SIGKILL)  # by PID, somewhere after that read
        rc, _ = c.finish()
        assert rc == -signal.SIGKILL
        counters, rej, offset = state(path)
        # Acknowledged means durable, and the state is exactly the entries
        # up to the stored offset: nothing twice, nothing half.
        done = index[ex.stream_id_of(offset)] + 1
        assert done > acked
        want_counters, want_rejected = prefix_state(done)
        assert counters == want_counters and rej == want_rejected

    c = Consumer(redis_url, path, core_env, "--sync", sync, "--count", "50", "--max-idle", "0")
    rc, err = c.finish()
    assert rc == 0, err
    counters, rej, offset = state(path)
    assert counters == dict(totals)
    assert rej == rejected and len(rejected) == n // 997
    assert offset == ex.offset_of(ids[-1])
    info = group_info(redis_url)
    assert info["pending"] == 0 and info["last-delivered-id"] == ids[-1]


def test_a_store_restored_from_an_older_copy_catches_up_from_its_own_offset(
        tmp_path, redis_url, core_env):
    path, old = str(tmp_path / "store"), str(tmp_path / "older-copy")
    ids1, totals1, _ = produce(redis_url, 800, keys=40, seed=1)
    rc, err = Consumer(redis_url, path, core_env, "--max-idle", "0").finish()
    assert rc == 0, err
    shutil.copytree(path, old)
    ids2, totals2, _ = produce(redis_url, 700, keys=40, seed=2)
    rc, err = Consumer(redis_url, path, core_env, "--max-idle", "0").finish()
    assert rc == 0, err
    assert group_info(redis_url)["pending"] == 0  # the group acknowledged everything
    shutil.rmtree(path)
    os.replace(old, path)  # the store is back at the first 800

    c = Consumer(redis_url, path, core_env, "--max-idle", "0")
    assert c.next_line() == f"ready offset={ex.offset_of(ids1[-1])}"
    rc, err = c.finish()
    assert rc == 0, err
    counters, _, offset = state(path)
    assert counters == dict(totals1 + totals2)
    assert offset == ex.offset_of(ids2[-1])


def test_sigterm_stops_after_the_batch_in_hand_and_closes_the_store(
        tmp_path, redis_url, core_env):
    path = str(tmp_path / "store")
    produce(redis_url, 3000, keys=50, seed=3)
    c = Consumer(redis_url, path, core_env, "--count", "10")  # no --max-idle: runs until stopped
    assert c.next_line().startswith("ready ")
    last = applied_id(c.next_line())
    c.proc.send_signal(signal.SIGTERM)
    while (line := c.next_line()) is not None:
        last = applied_id(line)
    rc, err = c.finish(timeout_s=ex.SHUTDOWN_DEADLINE_S)
    assert rc == 0, err
    assert err == ""
    with Store.open(path, readonly=True, recovery="strict") as s:
        # Closed cleanly (its log ends where the close said), and what it
        # said it applied last is its offset, with nothing pending in the group.
        assert s.recovery_report.problems == []
        assert s.offsets[SOURCE] == ex.offset_of(last)
    info = group_info(redis_url)
    assert info["pending"] == 0 and info["last-delivered-id"] == last


def test_a_bad_redis_url_is_one_line_not_a_traceback(tmp_path, core_env):
    r = subprocess.run([sys.executable, EXAMPLE, "--redis-url", "redis://127.0.0.1:1/0",
                        "--stream", STREAM, "--group", GROUP, "--store", str(tmp_path / "s"),
                        "--max-idle", "0"], env=core_env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert r.stderr.startswith("redis_stream_consumer: ConnectionError")
    assert "Traceback" not in r.stderr


def test_entries_pending_at_or_below_the_store_offset_are_acked_not_applied_again(
        tmp_path, redis_url, core_env):
    path = str(tmp_path / "store")
    ids, totals, _ = produce(redis_url, 600, keys=30, seed=4)
    rc, err = Consumer(redis_url, path, core_env, "--max-idle", "0").finish()
    assert rc == 0, err
    # What a kill between a batch's commit and its XACK leaves: entries the
    # store holds, delivered and still pending.
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.xgroup_setid(STREAM, GROUP, id="0")
    r.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=250)
    r.close()
    assert group_info(redis_url)["pending"] == 250

    rc, err = Consumer(redis_url, path, core_env, "--max-idle", "0").finish()
    assert rc == 0, err
    counters, _, offset = state(path)
    assert counters == dict(totals) and offset == ex.offset_of(ids[-1])
    info = group_info(redis_url)
    assert info["pending"] == 0 and info["last-delivered-id"] == ids[-1]
