"""Helpers to check a store the way rehydrate's own reliability harness
does (docs/reliability.md): a model of the state, and one oracle for every
crash, power-loss, I/O-error and corruption scenario.

    from rehydrate.testing import Model, check_recovery, crash_sweep, corruption_sweep

With pytest, the ``rehydrate_sweeps`` fixture (rehydrate.testing.plugin,
registered when rehydrate is installed) gives the sweeps.

Imported only by tests: nothing here is loaded by ``import rehydrate``.
"""

from .model import Model, apply_to_store, canon_state, record_count, store_state
from .oracle import OracleFailure, check_recovery
from .sweeps import SimulatedCrash, corruption_sweep, crash_at, crash_sweep

__all__ = ["Model", "OracleFailure", "SimulatedCrash", "apply_to_store", "canon_state",
           "check_recovery", "corruption_sweep", "crash_at", "crash_sweep", "record_count",
           "store_state"]
