"""A small stand-in of rehydrate.routing's contract (docs/migrations.md,
"Online migrations"), installed by the online-migration tests only when the
package has no routing module: routing, revert and status, no sampling
statistics. The package's own module is used whenever it exists."""

import hashlib
import importlib
import sys
import types
from collections.abc import Mapping

from rehydrate.errors import ConfigError

_MISSING = object()


def key_point(kb):
    return int.from_bytes(hashlib.blake2b(kb, digest_size=8).digest(), "big") / 2.0 ** 64


def check_auto_revert(spec):
    if not isinstance(spec, dict):
        raise ConfigError(f"auto_revert must be a dict, not {spec!r}")
    out = {"min_reads": 100}
    for k, v in spec.items():
        if k not in ("max_divergence_rate", "max_errors", "max_latency_ratio", "min_reads"):
            raise ConfigError(f"auto_revert: unknown threshold {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"auto_revert[{k!r}] must be a number")
        if k == "max_divergence_rate" and not 0 <= v <= 1 or k == "max_errors" and \
                (type(v) is not int or v < 0) or k == "max_latency_ratio" and not v > 1.0 \
                or k == "min_reads" and (type(v) is not int or v < 1):
            raise ConfigError(f"auto_revert[{k!r}] = {v!r} is out of range")
        out[k] = v
    return out


class _View(Mapping):
    def __init__(self, r):
        self._r = r

    def __getitem__(self, key):
        return self._r._read(key)

    def __iter__(self):
        return iter(self._r.old)

    def __len__(self):
        return len(self._r.old)

    ready = True

    def to_dict(self):
        return dict(self._r.old.items())


class Routing:
    def __init__(self, migration_id, table_name, old, shadow, *, encode_key, failed,
                 compare=None, sample=0.01, auto_revert=None, on_revert, seed=None):
        self.old, self.shadow = old, shadow
        self._encode, self._failed, self._on_revert = encode_key, failed, on_revert
        self._fraction = 0.0
        self.reverted = None
        self.errors = 0
        self._max_errors = (auto_revert or {}).get("max_errors")

    @property
    def fraction(self):
        return self._fraction

    def set_fraction(self, f):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
            raise ConfigError(f"fraction must be in [0, 1], not {f!r}")
        if self.reverted is None:
            self._fraction = float(f)

    def revert(self, reason):
        if self.reverted is not None:
            return
        self._fraction = 0.0
        self.reverted = reason
        self._on_revert(reason)

    def _read(self, key):
        if key_point(self._encode(key)) < self._fraction:
            if self._failed(key):
                self.errors += 1
                if self._max_errors is not None and self.errors > self._max_errors:
                    self.revert(f"max_errors: {self.errors} errors > {self._max_errors}")
                return self.old[key]
            return self.shadow[key]
        return self.old[key]

    def view(self):
        return _View(self)

    def status(self):
        empty = {"reads": 0, "errors": 0, "latency_mean_s": None, "latency_p50_s": None,
                 "latency_p99_s": None}
        return {"fraction": self._fraction, "paths": {"old": dict(empty),
                "new": dict(empty, errors=self.errors)}, "compared": 0, "divergences": 0,
                "compare_errors": 0, "divergence_rate": 0.0, "reverted": self.reverted,
                "revert_ms": None}


def install():
    """rehydrate.routing: the package's, or this stand-in."""
    try:
        return importlib.import_module("rehydrate.routing")
    except ImportError:
        mod = types.ModuleType("rehydrate.routing")
        for name in ("key_point", "check_auto_revert", "Routing"):
            setattr(mod, name, globals()[name])
        sys.modules["rehydrate.routing"] = mod
        return mod
