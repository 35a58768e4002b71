"""Read routing of an online migration (docs/migrations.md, "Routing and
automatic revert").

While a migration's shadow table is built and kept current, a stable-hash
fraction of the table's reads is served from the shadow (the "new" path),
the rest from the table itself (the "old" path). This module knows only two
Mappings, a key encoder and a few callbacks; the run's life (the shadow,
mirroring, cutover) is online.py's.

- ``key_point(kb)``: a key's point in [0, 1), from its canonical bytes; a
  key is on the new path iff its point < the fraction, so growing the
  fraction never moves a key back.
- ``PathStats``: reads, errors and latency of one path.
- ``check_auto_revert(spec)``: the thresholds, validated.
- ``Routing``: the fraction, the routed read view, compare sampling, and
  the automatic revert when a threshold is crossed.

Threads: reads may come from many threads while ``set_fraction`` or
``revert`` run. The fraction is one float attribute, read once per read
and stored once by a change, so a read sees the old or the new fraction,
never a torn one. The counters are plain ints bumped without a lock (a lock
per read would cost more than the read): under threads a count may miss an
increment, but nothing raises and no counter goes backwards. ``revert`` takes
a lock, so ``on_revert`` runs once.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from time import perf_counter, perf_counter_ns
from typing import Any, Optional

import xxhash

from .errors import ConfigError, MigrationError

__all__ = ["KEY_POINT_SEED", "key_point", "PathStats", "check_auto_revert", "Routing",
           "AUTO_REVERT_KEYS", "LATENCY_CHECK_EVERY", "TIME_EVERY", "WINDOW"]

#: The XXH64 seed of the key point: the ASCII bytes "rehydrat" as a
#: big-endian u64 (docs/FORMAT.md, "Key point").
KEY_POINT_SEED = 0x7265687964726174
_SCALE = 1.0 / (1 << 53)

#: Latencies each path keeps for its p50/p99 (the most recent ones).
WINDOW = 2048
_WMASK = WINDOW - 1
#: Routed reads time one read in this many per path (a power of two).
TIME_EVERY = 4
_TIME_MASK = TIME_EVERY - 1
#: The latency ratio is checked once every this many new-path reads.
LATENCY_CHECK_EVERY = 256

AUTO_REVERT_KEYS = ("max_divergence_rate", "max_errors", "max_latency_ratio", "min_reads")
_MISSING = object()
_xxh64 = xxhash.xxh64_intdigest


def key_point(kb: bytes) -> float:
    """The stable point in [0, 1) of a key's canonical bytes
    (``core.encode_key(key)``): the top 53 bits of XXH64(kb, seed
    KEY_POINT_SEED) over 2^53. The same on both cores, in every process."""
    return (_xxh64(kb, KEY_POINT_SEED) >> 11) * _SCALE


class PathStats:
    """Reads, errors and latencies of one path. ``record`` is a few int
    operations; the percentiles are computed by ``snapshot`` over the last
    WINDOW latencies, the mean over every latency recorded. (Latencies
    None with no reads.)"""

    __slots__ = ("reads", "errors", "total_ns", "_window", "_n")

    def __init__(self) -> None:
        self.reads = 0
        self.errors = 0
        self.total_ns = 0  # of the timed reads
        self._window = [0] * WINDOW
        self._n = 0  # latencies timed, ever (the ring's write position)

    def record(self, ns: int, error: bool = False) -> None:
        """One read that took ``ns`` nanoseconds (``error``: it failed)."""
        self.reads += 1
        if error:
            self.errors += 1
        self._time(ns)

    def _time(self, ns: int) -> None:
        # A latency into the mean and the ring (Routing times one read in
        # TIME_EVERY and counts every read itself).
        self.total_ns += ns
        n = self._n
        self._window[n & _WMASK] = ns
        self._n = n + 1

    def recent(self) -> list[int]:
        """The latencies in the window, sorted (ns)."""
        return sorted(self._window[:min(self._n, WINDOW)])

    def p99_ns(self) -> Optional[int]:
        """The p99 of the window, or None with no reads."""
        return _quantile(self.recent(), 0.99)

    def snapshot(self) -> dict[str, Any]:
        """{"reads", "errors", "latency_mean_s", "latency_p50_s",
        "latency_p99_s"}; latencies None with no reads."""
        reads = self.reads
        w = self.recent() if reads else []
        p50, p99 = _quantile(w, 0.5), _quantile(w, 0.99)
        return {
            "reads": reads,
            "errors": self.errors,
            "latency_mean_s": self.total_ns / self._n / 1e9 if self._n else None,
            "latency_p50_s": p50 / 1e9 if p50 is not None else None,
            "latency_p99_s": p99 / 1e9 if p99 is not None else None,
        }


def _quantile(ordered: list[int], q: float) -> Optional[int]:
    # Nearest rank: the smallest value with at least q of the window at or below it.
    if not ordered:
        return None
    rank = max(1, -(-int(q * len(ordered) * 1000) // 1000))  # ceil(q*n), float-safe
    return ordered[min(rank, len(ordered)) - 1]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and v == v and v not in (float("inf"), float("-inf")))


def check_auto_revert(spec: object) -> dict[str, Any]:
    """The auto-revert thresholds ``spec`` asks for, validated: a dict with
    any of max_divergence_rate (0..1), max_errors (int >= 0),
    max_latency_ratio (> 1.0) and min_reads (int >= 1, default 100, always
    present in the result). None: no thresholds ({"min_reads": 100}).
    ConfigError for anything else."""
    if spec is None:
        return {"min_reads": 100}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"auto_revert must be a dict of thresholds, not {spec!r}")
    unknown = sorted(str(k) for k in spec if k not in AUTO_REVERT_KEYS)
    if unknown:
        raise ConfigError(f"auto_revert: unknown threshold(s) {unknown}; "
                          f"expected some of {list(AUTO_REVERT_KEYS)}")
    out: dict[str, Any] = {"min_reads": 100}
    for name, (ok, kind, convert) in _THRESHOLDS.items():
        if name in spec:
            v = spec[name]
            if not ok(v):
                raise ConfigError(f"auto_revert: {name} must be {kind}, not {v!r}")
            out[name] = convert(v)
    return out


# name -> (valid, what it must be, stored as)
_THRESHOLDS: dict[str, tuple[Callable[[Any], bool], str, Callable[[Any], Any]]] = {
    "max_divergence_rate": (lambda v: _is_number(v) and 0.0 <= v <= 1.0,
                            "a number in 0..1", float),
    "max_errors": (lambda v: _is_int(v) and v >= 0, "an int >= 0", int),
    "max_latency_ratio": (lambda v: _is_number(v) and v > 1.0, "a number > 1.0", float),
    "min_reads": (lambda v: _is_int(v) and v >= 1, "an int >= 1", int),
}


def _check_fraction(f: object, what: str = "fraction") -> float:
    if not _is_number(f) or not 0.0 <= f <= 1.0:  # type: ignore[operator]
        raise ConfigError(f"{what} must be a number in 0..1, not {f!r}")
    return float(f)  # type: ignore[arg-type]


class Routing:
    """The routed reads of one online migration of ``table_name``: ``old``
    is the table, ``shadow`` the table at the new version.

    ``failed(key)`` is True when the migration function raised for ``key``
    (the shadow lacks it): a read routed to the new path then counts an
    error and serves the old value. ``compare(old_value, new_value)`` is
    True when the two agree; None compares nothing. ``sample`` (0..1) is the
    fraction of reads compared: of new-path reads, and of old-path reads of
    keys the shadow has. ``on_revert(reason)`` is called once, from the
    thread that reverts (a read's thread when a threshold trips): it must
    not block.
    """

    def __init__(self, migration_id: str, table_name: str, old: Mapping[Any, Any],
                 shadow: Mapping[Any, Any], *, encode_key: Callable[[Any], bytes],
                 failed: Callable[[Any], bool],
                 compare: Optional[Callable[[Any, Any], bool]] = None, sample: float = 0.01,
                 auto_revert: Optional[dict[str, Any]] = None,
                 on_revert: Callable[[str], None], seed: Optional[int] = None) -> None:
        sample = _check_fraction(sample, "sample")
        if compare is not None and not callable(compare):
            raise ConfigError(f"compare must be callable or None, not {compare!r}")
        self.migration_id = migration_id
        self.table_name = table_name
        self.old, self.shadow = old, shadow
        self._encode_key, self._failed = encode_key, failed
        self._compare = compare
        self._sample = sample if compare is not None else 0.0
        self.thresholds = check_auto_revert(auto_revert)
        self._on_revert = on_revert
        self._rng = random.Random(seed)
        self._fraction = 0.0
        self.reverted: Optional[str] = None
        self.revert_ms: Optional[float] = None
        self._revert_lock = threading.Lock()
        self.old_stats, self.new_stats = PathStats(), PathStats()
        self.compared = 0
        self.divergences = 0
        self.compare_errors = 0
        t = self.thresholds
        self._max_errors: Optional[int] = t.get("max_errors")
        self._max_div: Optional[float] = t.get("max_divergence_rate")
        self._max_lat: Optional[float] = t.get("max_latency_ratio")
        self._min_reads: int = t["min_reads"]

    # -- the fraction --------------------------------------------------------
    @property
    def fraction(self) -> float:
        """The fraction of keys (by key point) read from the shadow."""
        return self._fraction

    def set_fraction(self, f: float) -> None:
        """Route keys with point < ``f`` to the shadow. ConfigError unless
        0 <= f <= 1; MigrationError (reason "reverted") once reverted,
        and the fraction stays 0."""
        f = _check_fraction(f)
        if self.reverted is not None:
            raise MigrationError(
                f"migration {self.migration_id!r} was reverted ({self.reverted}); "
                "its routing cannot change", migration=self.migration_id, reason="reverted")
        self._fraction = f

    def revert(self, reason: str) -> None:
        """Every read back to the old path at once, then ``on_revert(reason)``
        once; later calls do nothing."""
        self._revert(reason, None)

    def _revert(self, reason: str, crossed_at: Optional[float]) -> None:
        # The fraction first, one attribute store, before the lock: reads
        # leave the new path as early as possible.
        self._fraction = 0.0
        if crossed_at is not None:
            ms = (perf_counter() - crossed_at) * 1000.0
        with self._revert_lock:
            if self.reverted is not None:
                return
            self.reverted = reason
            if crossed_at is not None:
                self.revert_ms = ms
        self._on_revert(reason)

    # -- reads ---------------------------------------------------------------
    def view(self) -> "RoutedView":
        """The read-only Mapping that routes each key's read."""
        return RoutedView(self)

    def _read(self, key: Any, default: Any) -> Any:
        # One read: the path by key point, counted, and one in TIME_EVERY
        # timed (a clock read costs as much as the lookup itself);
        # ``default`` is _MISSING for __getitem__ (KeyError when absent).
        f = self._fraction
        if f > 0.0:
            try:
                kb = self._encode_key(key)
            except Exception:  # noqa: BLE001 - a key no table can hold: the old path says so
                pass
            else:
                if f >= 1.0 or (_xxh64(kb, KEY_POINT_SEED) >> 11) * _SCALE < f:
                    return self._read_new(key, default)
        stats = self.old_stats
        reads = stats.reads
        stats.reads = reads + 1
        if reads & _TIME_MASK:
            v = self.old.get(key, _MISSING)
        else:
            t0 = perf_counter_ns()
            v = self.old.get(key, _MISSING)
            stats._time(perf_counter_ns() - t0)
        if self._sample and v is not _MISSING and self._rng.random() < self._sample \
                and self.reverted is None:
            nv = self.shadow.get(key, _MISSING)
            if nv is not _MISSING:
                self._compare_values(v, nv)
        if v is _MISSING:
            if default is _MISSING:
                self.old[key]  # the table's own refusal (KeyError, or a bad key's error)
                raise KeyError(key)
            return default
        return v

    def _read_new(self, key: Any, default: Any) -> Any:
        stats = self.new_stats
        reads = stats.reads
        stats.reads = reads + 1
        timed = not reads & _TIME_MASK
        t0 = perf_counter_ns() if timed else 0
        error = False
        try:
            if self._failed(key):
                error = True
                v = self.old.get(key, _MISSING)
            else:
                v = self.shadow.get(key, _MISSING)
        except Exception:  # noqa: BLE001 - a failed new-path read serves the old value
            error = True
            v = self.old.get(key, _MISSING)
        if timed:
            stats._time(perf_counter_ns() - t0)
        if error:
            stats.errors += 1
            self._check_errors()
        elif self._sample and v is not _MISSING and self._rng.random() < self._sample:
            ov = self.old.get(key, _MISSING)
            if ov is not _MISSING:
                self._compare_values(ov, v)
        if not reads % LATENCY_CHECK_EVERY and reads and self._max_lat is not None:
            self._check_latency()
        if v is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return v

    def _contains(self, key: Any) -> bool:
        f = self._fraction
        if f > 0.0:
            try:
                kb = self._encode_key(key)
            except Exception:  # noqa: BLE001 - no table holds such a key
                return False
            if f >= 1.0 or (_xxh64(kb, KEY_POINT_SEED) >> 11) * _SCALE < f:
                try:
                    if not self._failed(key):
                        return key in self.shadow
                except Exception:  # noqa: BLE001 - as a failed read: the old answer
                    pass
        return key in self.old

    # -- compare and thresholds ------------------------------------------------
    def _compare_values(self, old_value: Any, new_value: Any) -> None:
        try:
            same = bool(self._compare(old_value, new_value))  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - a broken compare never breaks a read
            self.compare_errors += 1
            return
        self.compared += 1
        if not same:
            self.divergences += 1
        limit = self._max_div
        if limit is not None and self.compared >= self._min_reads and self.reverted is None:
            rate = self.divergences / self.compared
            if rate > limit:
                at = perf_counter()
                self._revert(f"max_divergence_rate: {rate:.4g} divergence rate > {limit:g} "
                             f"({self.divergences} of {self.compared} compared)", at)

    def _check_errors(self) -> None:
        limit = self._max_errors
        if limit is not None and self.reverted is None:
            errors = self.new_stats.errors
            if errors > limit:
                at = perf_counter()
                self._revert(f"max_errors: {errors} errors > {limit}", at)

    def _check_latency(self) -> None:
        limit = self._max_lat
        if limit is None or self.reverted is not None:
            return
        if self.new_stats.reads < self._min_reads or self.old_stats.reads < self._min_reads:
            return
        new_p99, old_p99 = self.new_stats.p99_ns(), self.old_stats.p99_ns()
        if new_p99 is None or not old_p99:
            return
        ratio = new_p99 / old_p99
        if ratio > limit:
            at = perf_counter()
            self._revert(f"max_latency_ratio: p99 {new_p99 / 1e3:.1f}us new / "
                         f"{old_p99 / 1e3:.1f}us old = {ratio:.3g} > {limit:g}", at)

    # -- status ----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The routing's counters, JSON-safe."""
        compared = self.compared
        return {
            "fraction": self._fraction,
            "paths": {"old": self.old_stats.snapshot(), "new": self.new_stats.snapshot()},
            "compared": compared,
            "divergences": self.divergences,
            "compare_errors": self.compare_errors,
            "divergence_rate": self.divergences / compared if compared else 0.0,
            "reverted": self.reverted,
            "revert_ms": self.revert_ms,
        }


class RoutedView(Mapping[Any, Any]):
    """A read-only Mapping over a migrating table: ``[key]``, ``get`` and
    ``in`` route per key (and ``[key]``/``get`` count as reads of their
    path); iteration, ``len``, ``keys``/``items``/``values`` and
    ``to_dict`` are the old table's until cutover, so a scan sees one
    table, never a mix of two versions."""

    __slots__ = ("_r",)

    def __init__(self, routing: Routing) -> None:
        self._r = routing

    def __getitem__(self, key: Any) -> Any:
        return self._r._read(key, _MISSING)

    def get(self, key: Any, default: Any = None) -> Any:
        return self._r._read(key, default)

    def __contains__(self, key: object) -> bool:
        return self._r._contains(key)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._r.old)

    def __len__(self) -> int:
        return len(self._r.old)

    def keys(self) -> KeysView[Any]:
        return self._r.old.keys()

    def items(self) -> ItemsView[Any, Any]:
        return self._r.old.items()

    def values(self) -> ValuesView[Any]:
        return self._r.old.values()

    def to_dict(self) -> dict[Any, Any]:
        """The old table's entries as a plain dict."""
        old = self._r.old
        to_dict = getattr(old, "to_dict", None)
        return to_dict() if to_dict is not None else dict(old)

    def __repr__(self) -> str:
        r = self._r
        return f"<RoutedView of {r.table_name!r} for {r.migration_id!r}, fraction {r.fraction:g}>"
