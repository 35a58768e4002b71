"""``rehydrate bench``: cold starts on synthetic data shaped like yours,
phase by phase, next to what you would otherwise use (docs/bench.md).

Imported only by the command (and the benchmarks): nothing here is loaded
by ``import rehydrate``.
"""
