"""Crash-test consumer: ``consumer.py DIR``.

Consumes messages (source "s{i % 3}", offset i // 3, delta i % 7 + 1) through
``store.consume`` with sync="always", from where the store's offsets say it
stopped, and prints each acknowledged message index after its batch returns.
"""

import sys

from rehydrate import Store


def message(i):
    return f"s{i % 3}", i // 3, i % 7 + 1


def main() -> int:
    store = Store.open(sys.argv[1], sync="always")
    offsets = store.offsets
    i = 0
    while True:  # skip what the state includes, by asking the store
        src, off, _ = message(i)
        if off > offsets.get(src, -1):
            break
        i += 1
    print(f"ready {i}", flush=True)
    for i in range(i, i + 100_000):
        src, off, delta = message(i)
        b = store.consume(src, off)
        with b:
            b.incr("sums", src, delta)
            b.put("last", src, off)
        print(i, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
