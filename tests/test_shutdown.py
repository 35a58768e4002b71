"""rehydrate.close_on_signals (docs/durability.md, "Shutdown on a signal"):
real child processes (tests/helpers/shutdown_child.py) stopped with real
signals, each store reopened afterwards; the handlers' install and
uninstall; the one-time warning; bad arguments."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

import rehydrate as rh
from rehydrate import ConfigError, Store
from rehydrate.testing import check_recovery

from helpers.replication import wait_until
from helpers.shutdown_child import Blocking

HELPER = os.path.join(os.path.dirname(__file__), "helpers", "shutdown_child.py")
N = 1000
WAIT_S = 120.0  # how long a test waits for a child before calling it stuck


class Child:
    """shutdown_child.py SCENARIO DIR SYNC N [DEADLINE_S]; stdout and stderr
    read on threads, so every wait has a deadline."""

    def __init__(self, env, scenario, path, sync="interval", n=N, deadline_s=None):
        args = [sys.executable, HELPER, scenario, path, sync, str(n)]
        if deadline_s is not None:
            args.append(str(deadline_s))
        self.proc = subprocess.Popen(args, env=env, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue = queue.Queue()
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._readers:
            t.start()

    def _read_out(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_err(self):
        for line in self.proc.stderr:
            self.err.append(line)

    def stderr(self) -> str:
        return "".join(self.err)

    def next_line(self) -> str:
        try:
            line = self.lines.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"no line from the child: {self.stderr()}") from None
        assert line is not None, f"the child ended: {self.finish()}"
        return line

    def ready(self) -> int:
        line = self.next_line()
        assert line.startswith("ready "), line
        return int(line.split()[1])

    def finish(self) -> int:
        try:
            rc = self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # (by PID)
            self.proc.wait()
            raise AssertionError(f"the child did not exit: {self.stderr()}") from None
        for t in self._readers:
            t.join()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()
        return rc


def reopened(path, **kw):
    """(lsn, rows of table t, recovery problems) of the store at ``path``;
    the open itself shows that the LOCK was released."""
    with Store.open(path, recovery="strict", **kw) as s:
        rows = dict(s.table("t")) if "t" in s.tables() else {}
        return s.lsn, rows, s.recovery_report.problems


def want_rows(n):
    return {i: {"i": i} for i in range(n)}


# ------------------------------------------------------------ the signals
@pytest.mark.parametrize("sync", rh.SYNC_MODES)
def test_sigterm_closes_the_store_cleanly_and_exits_0(tmp_path, core_env, sync):
    path = str(tmp_path / "s")
    child = Child(core_env, "plain", path, sync)
    assert child.ready() == N
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == 0, child.stderr()
    lsn, rows, problems = reopened(path)
    assert lsn == N and rows == want_rows(N)
    assert problems == []  # a clean close's recorded end, held to under strict
    assert "SIGTERM: 1 store(s) closed" in child.stderr()


def test_sigint_exits_130_after_the_same_clean_close(tmp_path, core_env):
    path = str(tmp_path / "s")
    child = Child(core_env, "plain", path, "interval")
    assert child.ready() == N
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 128 + signal.SIGINT, child.stderr()
    assert reopened(path) == (N, want_rows(N), [])


def test_asyncio_loop_handlers_close_the_store(tmp_path, core_env):
    path = str(tmp_path / "s")
    child = Child(core_env, "asyncio", path, "interval")
    assert child.ready() == N
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == 0, child.stderr()
    assert reopened(path) == (N, want_rows(N), [])


def test_a_store_the_service_closed_itself_counts_as_closed(tmp_path, core_env):
    path = str(tmp_path / "s")
    child = Child(core_env, "closed", path, "interval")
    assert child.ready() == N
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == 0, child.stderr()
    assert reopened(path) == (N, want_rows(N), [])


@pytest.mark.parametrize("sync", ["interval", "none"])
def test_without_the_helper_sigterm_loses_unsynced_writes(tmp_path, core_env, sync):
    # Today's behaviour, the reason for the helper: the OS ends the process,
    # no close and no atexit run, and the buffered writes are gone.
    path = str(tmp_path / "s")
    child = Child(core_env, "bare", path, sync)
    assert child.ready() == N
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM
    lsn, rows, _ = reopened(path)
    assert lsn == 0 and rows == {}


def test_a_second_signal_during_the_close_is_logged_and_ignored(tmp_path, core_env):
    path = str(tmp_path / "s")
    child = Child(core_env, "on_close", path, "interval")
    assert child.ready() == N
    child.proc.send_signal(signal.SIGTERM)
    assert child.next_line() == f"on_close {signal.SIGTERM}"
    child.proc.send_signal(signal.SIGINT)
    assert wait_until(lambda: "SIGINT during the shutdown on SIGTERM: ignored"
                      in child.stderr(), WAIT_S), child.stderr()
    child.proc.stdin.write("go\n")  # on_close returns
    child.proc.stdin.flush()
    assert child.finish() == 0, child.stderr()  # SIGTERM's code, not SIGINT's
    lsn, rows, problems = reopened(path)
    # on_close's own write landed: it runs before the close.
    assert lsn == N + 1 and rows == {**want_rows(N), "on_close": signal.SIGTERM}
    assert problems == []


def test_a_failing_on_close_exits_1_after_closing_the_store(tmp_path, core_env):
    path = str(tmp_path / "s")
    child = Child(core_env, "raising", path, "interval")
    assert child.ready() == N
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == 1, child.stderr()
    assert "on_close of main.<locals>.failing_cleanup failed: RuntimeError" in child.stderr()
    assert reopened(path) == (N, want_rows(N), [])


def test_a_missed_deadline_exits_1_naming_the_store_not_closed(tmp_path, core_env):
    deadline_s = 4.0  # (a's close, milliseconds, fits in it on a loaded machine too)
    child = Child(core_env, "stuck", str(tmp_path), "interval", deadline_s=deadline_s)
    acked = child.next_line().split()
    assert acked[0] == "acked"
    acked_a, acked_b = int(acked[1]), int(acked[2])
    assert child.ready() == N
    t0 = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == 1, child.stderr()
    # It waited out the deadline (b's close never ends) and no longer than
    # the test's own patience (WAIT_S in finish).
    assert time.monotonic() - t0 >= deadline_s
    err = child.stderr()
    b = os.path.join(str(tmp_path), "b")
    assert f"deadline of {deadline_s} s passed; not done: close of {b}" in err, err
    assert f"close of {os.path.join(str(tmp_path), 'a')}" not in err
    # a: closed cleanly; nothing acknowledged lost (the shared oracle).
    ops = [("put", "t", i, {"i": i}) for i in range(N)]
    a = os.path.join(str(tmp_path), "a")
    assert check_recovery(lambda: Store.open(a, recovery="strict"), ops, acked_a) == \
        {"outcome": "recovered", "lsn": N}
    # b: its LOCK went with the process; every acknowledged write is there.
    with Store.open(b, tables={"t": Blocking}) as s:
        assert s.lsn == acked_b == N
        assert s.table("t").rows == want_rows(N)


def test_close_returns_once_another_threads_close_is_over(tmp_path):
    # What the shutdown relies on when the service closes the store too:
    # the second close() must not return while the first is still writing.
    entered, release = threading.Event(), threading.Event()

    class Slow(Blocking):
        def __len__(self):  # asked by close, for HINTS, after the final fsync
            entered.set()
            release.wait(WAIT_S)
            return 0

    store = Store.open(str(tmp_path / "s"), tables={"t": Slow})
    store.put("t", 1, {"i": 1})
    first = threading.Thread(target=store.close)
    first.start()
    assert entered.wait(WAIT_S)
    second = threading.Thread(target=store.close)
    second.start()
    second.join(0.2)
    assert second.is_alive()  # waiting for the first close
    release.set()
    first.join(WAIT_S)
    second.join(WAIT_S)
    assert not first.is_alive() and not second.is_alive()
    with Store.open(str(tmp_path / "s"), tables={"t": Blocking}, recovery="strict") as s:
        assert s.lsn == 1 and s.recovery_report.problems == []


# ------------------------------------------------------------ install, uninstall
def _open(tmp_path, name="s"):
    return Store.open(str(tmp_path / name))


def test_uninstall_restores_the_previous_handlers(tmp_path):
    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        int_before = signal.getsignal(signal.SIGINT)
        with _open(tmp_path) as store:
            handle = rh.close_on_signals(store)
            assert handle.installed and handle.signum is None
            assert signal.getsignal(signal.SIGTERM) is not mine
            assert signal.getsignal(signal.SIGINT) is not int_before
            handle.uninstall()
            assert not handle.installed
            assert signal.getsignal(signal.SIGTERM) is mine
            assert signal.getsignal(signal.SIGINT) is int_before
            handle.uninstall()  # twice is fine
            assert signal.getsignal(signal.SIGTERM) is mine
            # Only the signals asked for are touched.
            with rh.close_on_signals(store, signals=[signal.SIGUSR1]) as h2:
                assert h2.signals == (signal.SIGUSR1,)
                assert signal.getsignal(signal.SIGTERM) is mine
            assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)


def test_uninstall_with_a_loop_removes_the_loop_handler(tmp_path):
    store = _open(tmp_path)

    async def main():
        loop = asyncio.get_running_loop()
        handle = rh.close_on_signals(store, signals=[signal.SIGUSR2])
        assert handle.loop is loop
        # The loop's own handler (it wakes the loop), not the helper's:
        assert signal.getsignal(signal.SIGUSR2) not in (signal.SIG_DFL, handle._on_signal)
        handle.uninstall()
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL

    try:
        asyncio.run(main())
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    finally:
        store.close()


def test_one_handle_at_a_time(tmp_path):
    with _open(tmp_path, "a") as a, _open(tmp_path, "b") as b:
        with rh.close_on_signals(a):
            with pytest.raises(ConfigError, match="installed already"):
                rh.close_on_signals(b)
        with rh.close_on_signals(a, b, a) as handle:  # (after uninstall: fine)
            assert handle.stores == (a, b)


def test_off_the_main_thread_without_a_loop_is_a_config_error(tmp_path):
    got = []
    with _open(tmp_path) as store:
        t = threading.Thread(target=lambda: got.append(_raised(store)))
        t.start()
        t.join()
    assert len(got) == 1 and isinstance(got[0], ConfigError), got
    assert "main thread" in str(got[0])


def _raised(store):
    try:
        rh.close_on_signals(store).uninstall()
    except Exception as e:  # noqa: BLE001 - what the test looks at
        return e
    return None


BAD = {
    "no-store": ((), {}),
    "not-a-store": (("s",), {}),
    "deadline-zero": (None, {"deadline_s": 0}),
    "deadline-negative": (None, {"deadline_s": -1.0}),
    "deadline-nan": (None, {"deadline_s": float("nan")}),
    "deadline-str": (None, {"deadline_s": "10"}),
    "deadline-bool": (None, {"deadline_s": True}),
    "no-signals": (None, {"signals": ()}),
    "sigkill": (None, {"signals": [signal.SIGKILL]}),
    "not-a-signal": (None, {"signals": [100000]}),
    "signal-name": (None, {"signals": ["SIGTERM"]}),
    "exit-code-256": (None, {"exit_code": 256}),
    "exit-code-negative": (None, {"exit_code": -1}),
    "exit-code-bool": (None, {"exit_code": True}),
    "on-close-not-callable": (None, {"on_close": 5}),
    "loop-not-a-loop": (None, {"loop": object()}),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments_raise_config_error(tmp_path, case):
    stores, kw = BAD[case]
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with _open(tmp_path) as store:
        with pytest.raises(ConfigError):
            rh.close_on_signals(*(stores if stores is not None else (store,)), **kw)
    assert {s: signal.getsignal(s) for s in before} == before  # nothing installed


def test_a_closed_store_is_a_config_error(tmp_path):
    store = _open(tmp_path)
    store.close()
    with pytest.raises(ConfigError, match="closed already"):
        rh.close_on_signals(store)


def test_exit_codes():
    from rehydrate.shutdown import exit_code_for

    assert exit_code_for(signal.SIGTERM) == 0
    assert exit_code_for(signal.SIGINT) == 130
    assert exit_code_for(signal.SIGHUP) == 128 + signal.SIGHUP
    assert exit_code_for(signal.SIGTERM, 3) == 3


# ------------------------------------------------------------ the warning
WARN_CHILD = r"""
import signal, sys
import rehydrate as rh

case, d = sys.argv[1], sys.argv[2]
sync = "always" if case == "always" else "interval"
if case == "own-handler":
    signal.signal(signal.SIGTERM, lambda *a: None)
a = rh.Store.open(d + "/a", sync=sync)
b = rh.Store.open(d + "/b", sync=sync)
if case == "helper":
    rh.close_on_signals(a, b)
for round in range(3):  # several frames, two stores: still one warning
    for s in (a, b):
        for i in range(100):
            s.put("t", i, round)
        s.sync()
a.close()
b.close()
"""
WARNING_TEXT = "a SIGTERM would end this process without closing it"


@pytest.mark.parametrize("case", ["bare", "helper", "own-handler", "always"])
def test_the_sigterm_warning_is_logged_once_and_only_when_at_risk(tmp_path, core_env, case):
    r = subprocess.run([sys.executable, "-c", WARN_CHILD, case, str(tmp_path)], env=core_env,
                       capture_output=True, text=True, timeout=WAIT_S)
    assert r.returncode == 0, r.stderr
    if case == "bare":
        assert r.stderr.count(WARNING_TEXT) == 1, r.stderr
        assert os.path.join(str(tmp_path), "a") in r.stderr
        assert "close_on_signals" in r.stderr
    else:
        assert WARNING_TEXT not in r.stderr, r.stderr


def test_cli_commands_do_not_print_the_warning(tmp_path, core_env):
    mod = tmp_path / "my_migs.py"
    mod.write_text(
        "import rehydrate as rh\n"
        "migrations = rh.Migrations()\n"
        "@migrations.migration('double', table='t', to_version=2)\n"
        "def double(t):\n"
        "    for k in list(t):\n"
        "        t[k] = t[k] * 2\n")
    env = dict(core_env, PYTHONPATH=str(tmp_path))
    for name in ("by-cli", "by-script"):
        with Store.open(str(tmp_path / name)) as s:
            for i in range(10):
                s.put("t", i, i)
    # The migration writes to the log in the default sync mode: the warning's case.
    cli = subprocess.run([sys.executable, "-m", "rehydrate", "migrate", "apply",
                          str(tmp_path / "by-cli"), "--module", "my_migs"],
                         env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert cli.returncode == 0 and "applied 1 migration" in cli.stdout, cli.stderr
    assert WARNING_TEXT not in cli.stderr, cli.stderr
    # The same writes from a script of one's own: the warning (the pair).
    script = subprocess.run(
        [sys.executable, "-c", "import sys, rehydrate as rh, my_migs\n"
         "rh.Store.open(sys.argv[1], migrations=my_migs.migrations).close()",
         str(tmp_path / "by-script")], env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert script.returncode == 0, script.stderr
    assert script.stderr.count(WARNING_TEXT) == 1, script.stderr
    for name in ("by-cli", "by-script"):
        with Store.open(str(tmp_path / name)) as s:
            assert s.table("t").to_dict() == {i: 2 * i for i in range(10)}


def test_import_rehydrate_does_not_load_the_helper():
    code = ("import sys, rehydrate as rh\n"
            "assert 'rehydrate.shutdown' not in sys.modules\n"
            "assert 'asyncio' not in sys.modules\n"
            "f = rh.close_on_signals\n"
            "assert 'rehydrate.shutdown' in sys.modules and 'asyncio' not in sys.modules\n"
            "assert f is rh.close_on_signals\n"
            "assert rh.ShutdownHandle.__name__ == 'ShutdownHandle'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=WAIT_S)
    assert r.returncode == 0, r.stderr
