"""The type aliases of the public surface (docs/typing.md).

Annotations only: nothing here is checked at run time, the store checks its
arguments itself (UnsupportedKeyError, ValueEncodingError, ConfigError).
This module imports nothing from the package at run time, so any module can
use these names without an import cycle (ready.py imports nothing).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from .ready import Ready

__all__ = [
    "Key",
    "Number",
    "Offsets",
    "ProgressFn",
    "StrPath",
    "TableKind",
    "TableKinds",
    "Value",
]

#: A table key: ``str``, ``bytes`` or an ``int`` in int64. ``"a"``, ``b"a"``
#: and ``1`` are three different keys; ``bool`` is refused
#: (UnsupportedKeyError), as are longer keys than the format allows.
Key: TypeAlias = str | bytes | int

#: A stored value: anything msgpack encodes (None, bool, int, float, str,
#: bytes, and lists / tuples / dicts of these). Arrays read back as lists,
#: except as map keys, where they read back as tuples. The encoder decides,
#: not the type checker, so this is ``Any``.
Value: TypeAlias = Any

#: An ``incr`` delta, and what a counter holds: an int in int64 or a float
#: (``bool`` is refused).
Number: TypeAlias = int | float

#: Source offsets recorded with a batch: ``{source name: offset}``
#: (``Store.offsets()``, ``Store.consume``, ``Store.batch(offsets=...)``).
Offsets: TypeAlias = dict[str, int]

#: ``progress(bytes_done, bytes_total)``, called during replay.
ProgressFn: TypeAlias = Callable[[int, int], None]

#: A state directory's path: a ``str`` or an ``os.PathLike[str]``.
StrPath: TypeAlias = str | os.PathLike[str]

#: One table's kind in ``tables=``: ``rehydrate.DictTable`` (the class), a
#: ``rehydrate.NumericTable(...)`` declaration, or a ``rehydrate.StateType``
#: subclass (the class, not an instance). All three derive from ``Ready``,
#: which is what this alias names; ``Store.open`` refuses anything else
#: (ConfigError), a DictTable instance or a StateType instance included.
TableKind: TypeAlias = type[Ready] | Ready

#: The ``tables=`` option of ``Store.open``: ``{table name: kind}``; a table
#: not named is a KVTable.
TableKinds: TypeAlias = Mapping[str, TableKind]
