"""The slow path of value decoding, shared by both cores.

Scalars are decoded natively by the core; containers and anything unusual go
through here, so the two cores cannot drift on msgpack's corner cases.
"""

from __future__ import annotations

import msgpack

from .errors import CorruptionError


def _freeze(x):
    return tuple(_freeze(i) for i in x) if type(x) is list else x


def _pairs_with_tuple_keys(pairs):
    return {_freeze(k): v for k, v in pairs}


def unpack_container(raw):
    """Decode one stored value; CorruptionError if it is not one msgpack object.

    Arrays decode as lists, except as map keys, where a list cannot be a key:
    there they decode as tuples, so ``{(1, 2): "v"}`` reads back as written.
    """
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True)
    except TypeError:  # an array as a map key ("unhashable type: 'list'")
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True,
                                   object_pairs_hook=_pairs_with_tuple_keys)
        except Exception as e:
            raise CorruptionError(f"stored value does not decode: {e}",
                                  reason="bad_value") from None
    except Exception as e:  # msgpack raises several unrelated types
        raise CorruptionError(f"stored value does not decode: {e}", reason="bad_value") from None
