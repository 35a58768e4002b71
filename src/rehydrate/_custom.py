"""Custom ops (record op 6): shared by both cores, as ``_values.py`` is.

A custom op is a custom table's own operation (``store.write(table, op, key,
value)``): its record's value is msgpack ``[op name, value]``. Only a table
that defines ``_custom_raw`` (a StateType) takes one; any other table refuses
it with InvalidOperationError, before anything is logged on a live write and
as an apply error during replay.
"""

from __future__ import annotations

from .errors import InvalidOperationError


def apply_custom(table, kb, vb) -> None:
    fn = getattr(table, "_custom_raw", None)
    if fn is None:
        raise InvalidOperationError(
            f"a custom op reached a {type(table).__name__}: only StateType tables take them")
    fn(bytes(kb) if kb else None, bytes(vb))
