"""The model the tests check stores against: rehydrate.testing.model."""

from rehydrate.testing.model import *  # noqa: F401,F403
from rehydrate.testing.model import (  # noqa: F401
    INT64_MAX, INT64_MIN, Model, ModelInvalidOp, apply_to_store, canon, canon_state,
    check_delta, incr_value, normalize, record_count, store_state,
)
