"""The pytest plugin of rehydrate.testing (registered as ``rehydrate``):
the ``rehydrate_sweeps`` fixture, to run the crash and corruption sweeps
against your own tables and hooks (see rehydrate.testing.sweeps)."""

import pytest

from .sweeps import corruption_sweep, crash_at, crash_sweep


class Sweeps:
    crash = staticmethod(crash_sweep)
    corrupt = staticmethod(corruption_sweep)
    crash_at = staticmethod(crash_at)


@pytest.fixture
def rehydrate_sweeps():
    """``.crash(dir, work, check, **open_kwargs)``, ``.corrupt(dir, check,
    **open_kwargs)`` and ``.crash_at(n)`` (docs/reliability.md)."""
    return Sweeps()
