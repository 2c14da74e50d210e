"""Server frames split from a byte stream, whatever the chunking, within the size limit."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickd.fakebinance import encode_frame  # the fake's own encoder, written separately
from tickd.frames import PING, TEXT, ProtocolError, split


def test_a_recorded_frame_and_a_ping():
    data = b'{"e":"aggTrade","a":1}'
    buffer = bytearray(encode_frame(TEXT, data) + encode_frame(PING, b"1791382992488"))
    assert split(buffer, 1 << 20) == (
        [(TEXT, True, data), (PING, True, b"1791382992488")],
        len(buffer),
    )


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_every_length_encoding(size):
    buffer = bytearray(encode_frame(TEXT, b"x" * size))
    assert split(buffer, 1 << 20) == ([(TEXT, True, b"x" * size)], len(buffer))


frames = st.lists(st.tuples(st.sampled_from([0x1, 0x2, 0x9, 0xA]), st.binary(max_size=300)))


@given(frames, st.data())
def test_any_chunking_gives_the_same_frames(sent, data):
    wire = b"".join(encode_frame(opcode, payload) for opcode, payload in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    buffer, received = bytearray(), []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        buffer += wire[start:end]
        got, used = split(buffer, 1 << 20)
        del buffer[:used]
        received += got
    assert received == [(opcode, True, payload) for opcode, payload in sent]
    assert not buffer


def test_a_frame_over_the_limit_is_refused_from_its_header():
    header_only = bytearray(encode_frame(TEXT, b"x" * 70_000)[:10])
    with pytest.raises(ProtocolError, match="frame of 70000 bytes"):
        split(header_only, 65_536)


@pytest.mark.parametrize(("first", "second"), [(0x81, 0x85), (0xC1, 0x05), (0xB1, 0x05)])
def test_masked_frames_and_reserved_bits_are_protocol_errors(first, second):
    with pytest.raises(ProtocolError):
        split(bytearray([first, second]) + b"\0" * 9, 1 << 20)
