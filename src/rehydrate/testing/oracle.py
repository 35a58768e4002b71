"""The one oracle every reliability scenario is judged by.

After a crash, a power loss, an I/O error or damage, an open must give
either a typed error (a ``RehydrateError``, where the scenario allows one)
or a state such that:

- acknowledged <= recovered <= written (LSNs): nothing acknowledged is lost,
  nothing is invented;
- the recovered LSN ends a whole op (a batch is all there or not at all),
  so the state is an exact prefix of what was written;
- the state equals the model's replay of that prefix, value for value;
- the store's last LSN is the prefix's end.

Anything else, an untyped exception included, is an ``OracleFailure``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

from ..errors import RehydrateError
from .model import Model, canon_state, record_count, store_state


class OracleFailure(AssertionError):
    """The scenario broke the promise; the message says how."""


def prefix_ends(ops: Iterable) -> list:
    """The LSN at the end of each op (a batch takes one LSN per record)."""
    out, lsn = [], 0
    for op in ops:
        lsn += record_count(op)
        out.append(lsn)
    return out


def check_recovery(open_store: Callable, ops: list, acked_lsn: int, *,
                   allow_error: bool = False, base: Optional[Model] = None) -> dict:
    """Open with ``open_store()`` and judge the result against ``ops`` (the
    op tuples the writer sent, in order; see ``model.Model.apply``) of which
    those up to LSN ``acked_lsn`` were acknowledged. ``base``: the model of
    the state before ``ops`` (default: empty). Returns {"outcome":
    "recovered", "lsn"} or {"outcome": "error", "error"}; raises
    OracleFailure."""
    ends = prefix_ends(ops)
    start = base.lsn if base is not None else 0
    written = start + (ends[-1] if ends else 0)
    try:
        store = open_store()
    except RehydrateError as e:
        if not allow_error:
            raise OracleFailure(f"the open failed with {type(e).__name__}: {e}") from e
        return {"outcome": "error", "error": f"{type(e).__name__}: {e}",
                "reason": getattr(e, "reason", None)}
    except Exception as e:  # noqa: BLE001 - an untyped error is a failure itself
        raise OracleFailure(f"the open raised an untyped {type(e).__name__}: {e}") from e
    try:
        lsn = store.lsn
        if lsn < acked_lsn:
            raise OracleFailure(f"acknowledged LSN {acked_lsn} lost: recovered only {lsn}")
        if lsn > written:
            raise OracleFailure(f"recovered LSN {lsn} beyond the {written} written")
        model = base.copy() if base is not None else Model()
        for op, end in zip(ops, ends):
            if start + end > lsn:
                break
            model.apply(op)
        if model.lsn != lsn:
            raise OracleFailure(f"recovered LSN {lsn} is inside an op (a torn batch): "
                                f"the last whole op ends at {model.lsn}")
        got = canon_state(store_state(store), drop_empty=True)
        want = canon_state(model.state(), drop_empty=True)
        if got != want:
            diff = sorted(set(got) ^ set(want)) or [t for t in want if got.get(t) != want[t]]
            raise OracleFailure(f"state at LSN {lsn} differs from the model in tables {diff}")
    finally:
        store.close()
    return {"outcome": "recovered", "lsn": lsn}
