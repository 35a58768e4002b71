"""A child for tests/test_aio.py: async writes to a store opened in the
background (sync="always"), many of them cancelled at random points, then
a second wave in flight when the process SIGKILLs itself.

    python aio_cancel_writer.py STATE_DIR OUT_FILE SEED

The open is held (a warmup listener) until every first-wave write is sent,
so the early ones wait for admission; it is let go at a random point of the
cancellations. OUT_FILE gets one JSON line per settled write, written (and
flushed to the OS, which a SIGKILL keeps) after the write settled:
{"i", "op", "keys": [[table, key], ...], "lsn"} when acknowledged, or
{"i", "op", "keys", "cancelled": true, "present": bool} when cancelled
(``present``: what a read found once the cancellation returned and the
state was in). Write i
is put ("w", "k<i>"), incr ("base", "n<i>") (its table has records to
replay, so it waits for them) or a batch of two puts ("w", "b<i>a"/"b<i>b").
"""

import asyncio
import json
import os
import random
import signal
import sys
import threading

import rehydrate as rh
import rehydrate.aio as rha

WAVE = 120


class Gate:
    """Holds the open at the start of its replay until ``release``."""

    def __init__(self):
        self.opened = threading.Event()

    def on_phase_start(self, phase, info):
        if phase == "replay":
            self.opened.wait(60)


def op_of(i):
    return ("put", "incr", "batch")[i % 3]


def keys_of(i):
    kind = op_of(i)
    if kind == "put":
        return [["w", f"k{i}"]]
    if kind == "incr":
        return [["base", f"n{i}"]]
    return [["w", f"b{i}a"], ["w", f"b{i}b"]]


async def write(s, i):
    kind = op_of(i)
    if kind == "put":
        return await s.put("w", f"k{i}", i)
    if kind == "incr":
        return await s.incr("base", f"n{i}", i)
    async with s.batch() as b:
        b.put("w", f"b{i}a", i)
        b.put("w", f"b{i}b", -i)
    return b.lsn


async def main(path, out_path, seed):
    rnd = random.Random(seed)
    gate = Gate()
    s = await rha.open_background(path, sync="always", warmup=rh.Warmup(listeners=[gate]))
    out = open(out_path, "a")

    written = [0]  # writes reported settled

    def report(entry):
        out.write(json.dumps(entry) + "\n")
        out.flush()
        written[0] += 1

    cancelled = []

    def report_cancelled():
        # (Read once the state is in: a read of a table still loading waits.)
        for i in cancelled:
            present = all(s.get(t, k) is not None for t, k in keys_of(i))
            report({"i": i, "op": op_of(i), "keys": keys_of(i), "cancelled": True,
                    "present": present})
        cancelled.clear()

    async def run(i):
        try:
            lsn = await write(s, i)
        except asyncio.CancelledError:
            cancelled.append(i)
            if s.readiness()["ready"]:
                report_cancelled()
            return
        report({"i": i, "op": op_of(i), "keys": keys_of(i), "lsn": lsn})

    # Wave 1: sent while the open is held. Half are cancelled: some at a
    # random loop iteration (held: the open is let go at one too), some a
    # random number of iterations after writes are taken (held, or already
    # admitted and logged).
    tasks = [asyncio.create_task(run(i)) for i in range(WAVE)]
    to_cancel = rnd.sample(tasks, WAVE // 2)
    early = {t: rnd.randrange(60) for t in to_cancel[: WAVE // 4]}
    late = {t: rnd.randrange(200) for t in to_cancel[WAVE // 4:]}
    release_at = rnd.randrange(60)
    step = taken_at = 0
    while not all(t.done() for t in tasks):
        if step == release_at:
            gate.opened.set()
        if not taken_at and s.readiness().get("writes") == "taken":
            taken_at = step
        for t, at in early.items():
            if at == step:
                t.cancel()
        for t, after in late.items():
            if taken_at and step == taken_at + after:
                t.cancel()
        step += 1
        await asyncio.sleep(0)
    assert await s.wait_ready(60)
    report_cancelled()

    # Wave 2: on the ready store, each write cancelled (maybe) once a random
    # number of others settled; the process is killed once a random number
    # settled, with the rest in flight.
    tasks = [asyncio.create_task(run(WAVE + i)) for i in range(WAVE)]
    cancel_after = {t: rnd.randrange(WAVE) for t in rnd.sample(tasks, WAVE // 2)}
    kill_after = rnd.randrange(10, WAVE // 2)
    while written[0] - WAVE < kill_after and not all(t.done() for t in tasks):
        for t, after in cancel_after.items():
            if written[0] - WAVE >= after:
                t.cancel()
        await asyncio.sleep(0)
    report({"killed": True})
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
