"""Fuzz the frame payload (batch) decoder, native against the pure twin.

    python fuzz/fuzz_payload.py fuzz/corpus/payload -runs=100000

An input is ``count:u8 seg_tids:u8 payload``: the record count the header
would claim, how many table ids (0..n-1) the segment declared before, and
the raw payload (offsets, declarations, records). Checks, for any input: no
crash, no hang, only ValueError for a bad payload, and both cores decode it
to the same declarations and records or refuse it with the same message.
"""

from rehydrate import _core as native
from rehydrate import _pure as pure

from _fuzzing import run  # (the harnesses run as scripts, from fuzz/)


def _decode(core, payload, count, tids):
    try:
        return "ok", core.decode_payload(payload, count, tids)
    except ValueError as e:
        return "bad", str(e)


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    count, tids, payload = max(1, data[0]), set(range(data[1] % 8)), data[2:]
    a, b = _decode(native, payload, count, tids), _decode(pure, payload, count, tids)
    if a != b:
        raise AssertionError(f"native and pure disagree:\n{a!r}\n{b!r}")


def seeds() -> dict:
    """Payloads of real frames: a put, a batch, offsets, a numeric and a
    versioned declaration."""
    import msgpack

    from rehydrate import _format as F

    def payload(decls, ops, offsets=None):
        buf = native.LogBuffer(1)
        tables = {tid: native.KVTable() for tid, *_ in decls}
        for op in ops:
            getattr(buf, op[0])(tables[op[1]], op[1], *op[2:])
        first, count, records = buf.take()
        frame = native.encode_frame(first, count, decls, records, offsets)
        h = native.parse_frame_header(frame, 0)
        body = frame[F.FRAME_HEADER_BYTES:]
        raw = native.lz4_decompress(body, h.raw_len) if h.codec == F.CODEC_LZ4 else body
        return bytes((count, 0)) + raw

    schema = msgpack.packb({"columns": [["n", "int64"]], "rows": 4})
    return {
        "put": payload([(0, F.KIND_KV, b"t")], [("put", 0, "k", b"v")]),
        "mixed": payload([(0, F.KIND_KV, b"t"), (1, F.KIND_KV, b"u", b"", 3)],
                         [("put", 0, 1, [1, 2]), ("incr", 1, "c", 5), ("delete", 0, 1),
                          ("clear", 1)]),
        "offsets": payload([(0, F.KIND_KV, b"t")], [("put", 0, b"k", "x" * 700)],
                           {"orders/1": 12}),
        "numeric": bytes((1, 0)) + b"\x01\x00\x04\x01n" + bytes((len(schema),)) + schema
        + b"\x01\x00\x09\x03" + (3).to_bytes(8, "little") + b"\x01\xc0",
    }


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
