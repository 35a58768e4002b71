"""The slow path of value decoding, shared by both cores.

Scalars are decoded natively by the core; containers and anything unusual go
through here, so the two cores cannot drift on msgpack's corner cases.
"""

from __future__ import annotations

import msgpack

from .errors import CorruptionError

_unpackb = msgpack.unpackb


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
        # msgpack's defaults are raw=False and use_list=True, with strict map
        # keys (str or bytes only): the call without keywords costs about a
        # third less (a migration decodes every value), and whatever it
        # refuses goes on below; a value it takes decodes the same there.
        return _unpackb(raw)
    except Exception:  # noqa: BLE001 - decided below
        pass
    try:
        return _unpackb(raw, raw=False, strict_map_key=False, use_list=True)
    except TypeError:  # an array as a map key ("unhashable type: 'list'")
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True,
                                   object_pairs_hook=_pairs_with_tuple_keys)
        except Exception as e:
            raise CorruptionError(f"stored value does not decode: {e}",
                                  reason="bad_value") from None
    except Exception as e:  # msgpack raises several unrelated types
        raise CorruptionError(f"stored value does not decode: {e}", reason="bad_value") from None
