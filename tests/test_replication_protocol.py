"""The replication protocol's messages and checks (docs/replication.md,
"The replication protocol, version 1"), without a network: round trips,
every header corruption, truncation at every byte, and the Mirror that
writes nothing it has not checked."""

from __future__ import annotations

import io
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rehydrate import ReplicationError, Store
from rehydrate.replication import (
    BYTES,
    END,
    HEADER_BYTES,
    HEARTBEAT,
    MAX_BODY_BYTES,
    MAX_CONTROL_BYTES,
    Message,
    check_frames,
    decode_control,
    encode_control,
    encode_message,
    read_message,
    whole_frames_end,
)
from rehydrate.replication_client import Mirror
from rehydrate.wal import segment_name

from helpers.replication import wal_files


def reader(data: bytes):
    stream = io.BytesIO(data)
    return lambda n: stream.read(n)


def read_all(data: bytes) -> list:
    """Every message of ``data`` (raises at the first bad one)."""
    read, out = reader(data), []
    while True:
        try:
            out.append(read_message(read, peer="test"))
        except ReplicationError as e:
            if e.reason == "closed":
                return out
            raise


@pytest.fixture
def segment(tmp_path):
    """(first LSN, bytes) of a real segment of a few small frames."""
    path = str(tmp_path / "p")
    with Store.open(path) as s:
        for i in range(4):
            s.put("t", i, "v" * (10 + i))
            s.sync()
    (name, data), = wal_files(path).items()
    return int(name.split(".")[0]), data


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from([BYTES, HEARTBEAT, END]),
       segment=st.integers(0, 2**64 - 1), offset=st.integers(0, 2**64 - 1),
       body=st.binary(max_size=2000))
def test_a_message_reads_back_as_it_was_written(kind, segment, offset, body):
    if kind != BYTES:
        segment = offset = 0  # control messages name no segment
    raw = encode_message(kind, segment, offset, body)
    assert len(raw) == HEADER_BYTES + len(body)
    assert read_all(raw + raw) == [Message(kind, segment, offset, body)] * 2


def test_control_messages_carry_json():
    msg, = read_all(encode_control(HEARTBEAT, {"lsn": 5, "epoch": 1}))
    assert decode_control(msg) == {"lsn": 5, "epoch": 1}
    with pytest.raises(ReplicationError) as e:
        decode_control(Message(HEARTBEAT, 0, 0, b"[1]"))
    assert e.value.reason == "bad_message"


def _set(raw: bytes, fmt: str, at: int, value, fix_crc: bool = True) -> bytes:
    """``raw`` with a header field changed (its CRC made right again when
    ``fix_crc``, so the field's own check is what fails)."""
    from rehydrate._backend import core

    b = bytearray(raw)
    struct.pack_into(fmt, b, at, value)
    if fix_crc:
        struct.pack_into("<I", b, 28, core().crc32c(bytes(b[:28])))
    return bytes(b)


FIELD_CASES = {
    "magic": ("<4s", 0, b"RHRX"),
    "kind_0": ("<B", 4, 0),
    "kind_4": ("<B", 4, 4),
    "kind_255": ("<B", 4, 255),
    "reserved_u8": ("<B", 5, 1),
    "reserved_u16": ("<H", 6, 0x100),
    "length_over_cap": ("<I", 24, MAX_BODY_BYTES + 1),
    "length_max": ("<I", 24, 0xFFFFFFFF),
    "crc": ("<I", 28, 0),
}


@pytest.mark.parametrize("case", sorted(FIELD_CASES))
def test_each_bad_header_field_is_a_typed_error(segment, case):
    first, data = segment
    raw = encode_message(BYTES, first, 0, data)
    fmt, at, value = FIELD_CASES[case]
    bad = _set(raw, fmt, at, value, fix_crc=case != "crc")
    with pytest.raises(ReplicationError) as e:
        read_message(reader(bad), peer="http://127.0.0.1:1", position=64)
    assert e.value.reason == "bad_message"
    assert e.value.peer == "http://127.0.0.1:1" and e.value.offset == 64
    assert "http://127.0.0.1:1" in str(e.value)


def test_a_control_message_with_a_big_body_or_a_segment_is_refused():
    big = encode_message(HEARTBEAT, 0, 0, b" " * (MAX_CONTROL_BYTES + 1))
    named = encode_message(END, 3, 0, b"{}")
    for raw in (big, named):
        with pytest.raises(ReplicationError) as e:
            read_message(reader(raw))
        assert e.value.reason == "bad_message"


@pytest.mark.parametrize("at", range(HEADER_BYTES))
def test_every_header_byte_flipped_is_a_bad_message(segment, at):
    first, data = segment
    raw = bytearray(encode_message(BYTES, first, 0, data))
    raw[at] ^= 0xFF
    with pytest.raises(ReplicationError) as e:
        read_message(reader(bytes(raw)))
    assert e.value.reason == "bad_message"


def test_a_stream_cut_at_every_byte_is_truncated_or_closed(segment):
    first, data = segment
    raw = encode_message(BYTES, first, 0, data) + encode_control(HEARTBEAT, {"lsn": 1})
    one = HEADER_BYTES + len(data)
    for n in range(len(raw) + 1):
        read = reader(raw[:n])
        got = []
        with pytest.raises(ReplicationError) as e:
            while True:
                got.append(read_message(read, peer="p"))
        expected = "closed" if n in (0, one, len(raw)) else "truncated"
        assert e.value.reason == expected, n
        assert len(got) == (n >= one) + (n == len(raw))


def test_whole_frames_are_found_and_checked(segment):
    first, data = segment
    end = whole_frames_end(data, 32, 2)
    assert end == len(data)
    # A cut frame: the boundary is the frame before it.
    assert whole_frames_end(data[:-1], 32, 2) < len(data) - 1
    check_frames(data, first, 0, 2)
    check_frames(data[32:], first, 32, 2)
    with pytest.raises(ReplicationError) as e:
        check_frames(data[:-1], first, 0, 2)
    assert e.value.reason == "bad_frame" and e.value.path == segment_name(first)


def _mirror_state(path: str) -> dict:
    waldir = os.path.join(path, "wal")
    return {n: open(os.path.join(waldir, n), "rb").read() for n in sorted(os.listdir(waldir))}


@pytest.mark.parametrize("start", [0, 32], ids=["with_header", "frames_only"])
def test_every_body_byte_flipped_is_refused_and_nothing_is_written(tmp_path, segment, start):
    first, data = segment
    mirror = Mirror(str(tmp_path / "m"))
    if start:
        mirror.write(first, 0, data[:32])
    before = _mirror_state(str(tmp_path / "m"))
    body = data[start:]
    refused = 0
    for at in range(len(body)):
        bad = bytearray(body)
        bad[at] ^= 0x01
        with pytest.raises(ReplicationError) as e:
            mirror.write(first, start, bytes(bad))
        assert e.value.reason in ("bad_frame", "unsupported_format"), at
        refused += 1
        assert _mirror_state(str(tmp_path / "m")) == before, at
    assert refused == len(body)
    assert mirror.write(first, start, body) == len(data)
    mirror.close()
    assert _mirror_state(str(tmp_path / "m")) == {segment_name(first): data}


def test_the_mirror_takes_bytes_only_where_its_copy_ends(tmp_path, segment):
    first, data = segment
    mirror = Mirror(str(tmp_path / "m"))
    assert mirror.position() is None
    with pytest.raises(ReplicationError) as e:
        mirror.write(first, 32, data[32:])  # no segment yet
    assert e.value.reason == "bad_message"
    mirror.write(first, 0, data[:32])
    assert mirror.position() == (first, 32)
    for offset in (33, len(data)):
        with pytest.raises(ReplicationError) as e:
            mirror.write(first, offset, data[32:])
        assert e.value.reason == "bad_message"
    with pytest.raises(ReplicationError) as e:
        mirror.write(first, 0, data)  # not a newer segment
    assert e.value.reason == "bad_message"
    assert mirror.write(first, 32, data[32:]) == len(data)
    mirror.sync()
    mirror.close()
    assert mirror.position() == (first, len(data))
