"""Length-prefixed framing and chunking (core/framing.py), with no sockets."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plasm_grpc.core.framing import (
    LENGTH_PREFIX_BYTES,
    MAX_FRAME_BYTES,
    MAX_STREAM_ID,
    Chunk,
    Chunker,
    FrameDecoder,
    Reassembler,
    encode_frame,
)
from plasm_grpc.core.overlay_errors import (
    LocalOverlayError,
    OverlayProtocolError,
    RemoteOverlayError,
)

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(min(c, len(data)) for c in cuts)
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


# -- frames --------------------------------------------------------------------------------


def test_a_frame_is_a_big_endian_u32_length_and_the_payload() -> None:
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(bytes(300))[:LENGTH_PREFIX_BYTES] == b"\x00\x00\x01\x2c"
    assert MAX_FRAME_BYTES == 1 << 20


@FAST
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=10),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_frames_round_trip_through_any_split(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    frames = [f for piece in split(stream, cuts) for f in decoder.feed(piece)]
    assert frames == payloads
    assert decoder.buffered_bytes == 0
    decoder.end_of_stream()


def test_frames_one_byte_at_a_time() -> None:
    payloads = [b"", b"x", bytes(range(256)) * 3, b"", b"last"]
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for i in range(len(stream)):
        frames += decoder.feed(stream[i : i + 1])
        assert decoder.buffered_bytes <= LENGTH_PREFIX_BYTES + 768
    assert frames == payloads


def test_a_length_above_the_maximum_is_refused_before_any_payload() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    assert decoder.feed(encode_frame(bytes(100))) == [bytes(100)]  # the maximum itself is fine
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(RemoteOverlayError, match="101 bytes is above the maximum of 100"):
        decoder.feed(b"\x00\x65")  # the length alone: no payload was sent or buffered
    assert decoder.buffered_bytes == 0
    with pytest.raises(LocalOverlayError, match="already failed"):
        decoder.feed(b"\x00")


def test_a_huge_length_is_refused_even_inside_a_large_read() -> None:
    decoder = FrameDecoder()
    stream = encode_frame(b"ok") + b"\xff\xff\xff\xff" + bytes(10_000)
    with pytest.raises(RemoteOverlayError, match="4294967295 bytes"):
        decoder.feed(stream)
    assert decoder.buffered_bytes == 0


def test_encoding_above_the_maximum_is_a_local_error() -> None:
    assert encode_frame(bytes(10), max_frame_bytes=10) == b"\x00\x00\x00\x0a" + bytes(10)
    with pytest.raises(LocalOverlayError, match="at most 10 bytes"):
        encode_frame(bytes(11), max_frame_bytes=10)
    with pytest.raises(LocalOverlayError, match=f"at most {MAX_FRAME_BYTES} bytes"):
        encode_frame(bytes(MAX_FRAME_BYTES + 1))


@pytest.mark.parametrize("bad", [-1, 2**32])
def test_the_maximum_must_fit_the_length_prefix(bad: int) -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        FrameDecoder(max_frame_bytes=bad)
    with pytest.raises(ValueError, match="max_frame_bytes"):
        encode_frame(b"", max_frame_bytes=bad)


@pytest.mark.parametrize("tail", [b"\x00", b"\x00\x00\x00\x05", b"\x00\x00\x00\x05abc"])
def test_a_stream_that_ends_inside_a_frame_is_an_error(tail: bytes) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"whole") + tail) == [b"whole"]
    with pytest.raises(RemoteOverlayError, match="ended inside a frame"):
        decoder.end_of_stream()


@FAST
@given(
    chunks=st.lists(st.binary(max_size=64), max_size=30),
    max_frame_bytes=st.integers(0, 64),
)
def test_random_bytes_only_raise_the_protocol_error_and_stay_bounded(
    chunks: list[bytes], max_frame_bytes: int
) -> None:
    decoder = FrameDecoder(max_frame_bytes=max_frame_bytes)
    for chunk in chunks:
        try:
            for frame in decoder.feed(chunk):
                assert len(frame) <= max_frame_bytes
        except OverlayProtocolError:
            return
        assert decoder.buffered_bytes <= LENGTH_PREFIX_BYTES + max_frame_bytes


# -- chunking ------------------------------------------------------------------------------


def drain(chunker: Chunker) -> list[Chunk]:
    out = []
    while (chunk := chunker.next_chunk()) is not None:
        out.append(chunk)
    return out


def test_a_message_is_split_into_bounded_chunks() -> None:
    chunker = Chunker(chunk_bytes=4)
    sid = chunker.add(b"0123456789")
    chunks = drain(chunker)
    assert [c.data for c in chunks] == [b"0123", b"4567", b"89"]
    assert {c.stream_id for c in chunks} == {sid} == {1}
    assert [c.first for c in chunks] == [True, False, False]
    assert [c.end_of_message for c in chunks] == [False, False, True]
    assert [c.total_bytes for c in chunks] == [10, None, None]
    assert chunker.pending == 0


def test_an_empty_or_small_message_is_one_chunk() -> None:
    chunker = Chunker(chunk_bytes=4)
    chunker.add(b"")
    chunker.add(b"1234")
    assert drain(chunker) == [
        Chunk(stream_id=1, data=b"", first=True, end_of_message=True, total_bytes=0),
        Chunk(stream_id=2, data=b"1234", first=True, end_of_message=True, total_bytes=4),
    ]


def test_chunks_of_pending_messages_are_interleaved_round_robin() -> None:
    chunker = Chunker(chunk_bytes=2)
    big, small, other = chunker.add(b"aaaaaaaa"), chunker.add(b"bb"), chunker.add(b"cccc")
    order = [c.stream_id for c in drain(chunker)]
    assert order == [big, small, other, big, other, big, big]


def test_a_cancelled_message_sends_no_more_chunks() -> None:
    chunker = Chunker(chunk_bytes=1)
    first, second = chunker.add(b"xyz"), chunker.add(b"uv")
    assert chunker.next_chunk() == Chunk(
        stream_id=first, data=b"x", first=True, end_of_message=False, total_bytes=3
    )
    assert chunker.cancel(first)
    assert not chunker.cancel(first)
    assert {c.stream_id for c in drain(chunker)} == {second}


def test_stream_ids_run_out_rather_than_repeat() -> None:
    chunker = Chunker(chunk_bytes=1)
    chunker._next_stream_id = MAX_STREAM_ID  # skip four billion messages
    assert chunker.add(b"last") == MAX_STREAM_ID
    with pytest.raises(LocalOverlayError, match="exhausted"):
        chunker.add(b"one too many")


def test_chunk_and_chunker_check_their_fields() -> None:
    with pytest.raises(ValueError, match="chunk_bytes"):
        Chunker(chunk_bytes=0)
    for sid in (0, MAX_STREAM_ID + 1):
        with pytest.raises(ValueError, match="stream id"):
            Chunk(stream_id=sid, data=b"", first=True, end_of_message=True)
    with pytest.raises(ValueError, match="uint64"):
        Chunk(stream_id=1, data=b"", first=True, end_of_message=True, total_bytes=-1)


@FAST
@given(
    messages=st.lists(st.binary(max_size=200), min_size=1, max_size=6),
    chunk_bytes=st.integers(1, 50),
    small=st.lists(st.binary(max_size=10), max_size=10),
    data=st.data(),
)
def test_interleaved_chunks_reassemble_to_the_messages(
    messages: list[bytes], chunk_bytes: int, small: list[bytes], data: st.DataObject
) -> None:
    chunker = Chunker(chunk_bytes=chunk_bytes)
    ids = [chunker.add(m) for m in messages]
    chunks = drain(chunker)
    assert all(len(c.data) <= chunk_bytes for c in chunks)
    # The wire: small whole messages slipped between chunks at random places.
    wire: list[Chunk | bytes] = list(chunks)
    places = sorted(
        data.draw(st.lists(st.integers(0, len(chunks)), min_size=len(small), max_size=len(small)))
    )
    for i, (place, message) in enumerate(zip(places, small, strict=True)):
        wire.insert(place + i, message)  # keeps the small messages in their order

    reassembler = Reassembler(max_message_bytes=200, max_buffered_bytes=1200, max_streams=6)
    whole: dict[int, bytes] = {}
    smalls = []
    for item in wire:
        if isinstance(item, bytes):
            smalls.append(item)
            continue
        done = reassembler.receive(item)
        if done is not None:
            whole[item.stream_id] = done
    assert whole == dict(zip(ids, messages, strict=True))
    assert smalls == small
    assert reassembler.buffered_bytes == 0
    assert reassembler.open_streams == 0


# -- reassembly limits ---------------------------------------------------------------------


def start(sid: int, data: bytes, *, total: int | None = None, end: bool = False) -> Chunk:
    return Chunk(stream_id=sid, data=data, first=True, end_of_message=end, total_bytes=total)


def more(sid: int, data: bytes, *, end: bool = False, total: int | None = None) -> Chunk:
    return Chunk(stream_id=sid, data=data, first=False, end_of_message=end, total_bytes=total)


def test_a_declared_size_above_the_limit_is_refused_before_buffering() -> None:
    reassembler = Reassembler(max_message_bytes=100)
    with pytest.raises(RemoteOverlayError, match="declares 101 bytes"):
        reassembler.receive(start(1, b"", total=101))
    assert reassembler.open_streams == 0


def test_a_message_growing_past_the_limit_is_dropped() -> None:
    reassembler = Reassembler(max_message_bytes=10)
    assert reassembler.receive(start(1, bytes(6))) is None
    assert reassembler.buffered_bytes == 6
    with pytest.raises(RemoteOverlayError, match="maximum message size of 10"):
        reassembler.receive(more(1, bytes(5)))
    assert reassembler.buffered_bytes == 0
    assert reassembler.open_streams == 0
    with pytest.raises(RemoteOverlayError, match="not open"):
        reassembler.receive(more(1, b"x", end=True))


def test_one_chunk_messages_are_checked_too() -> None:
    reassembler = Reassembler(max_message_bytes=3)
    assert reassembler.receive(start(1, b"abc", end=True)) == b"abc"
    assert reassembler.receive(start(1, b"abc", end=True, total=3)) == b"abc"
    with pytest.raises(RemoteOverlayError, match="maximum message size"):
        reassembler.receive(start(2, b"abcd", end=True))
    with pytest.raises(RemoteOverlayError, match="declared 2 bytes but carried 3"):
        reassembler.receive(start(3, b"abc", end=True, total=2))
    assert reassembler.open_streams == 0


def test_all_partial_messages_together_are_bounded() -> None:
    reassembler = Reassembler(max_message_bytes=10, max_buffered_bytes=15)
    reassembler.receive(start(1, bytes(8)))
    reassembler.receive(start(2, bytes(7)))
    with pytest.raises(RemoteOverlayError, match="more than 15 bytes"):
        reassembler.receive(more(2, b"x"))
    assert reassembler.buffered_bytes == 8  # stream 2 dropped, stream 1 intact
    assert reassembler.receive(more(1, b"xy", end=True)) == bytes(8) + b"xy"
    assert reassembler.buffered_bytes == 0


def test_open_streams_are_bounded() -> None:
    reassembler = Reassembler(max_message_bytes=10, max_streams=2)
    reassembler.receive(start(1, b"a"))
    reassembler.receive(start(2, b"b"))
    with pytest.raises(RemoteOverlayError, match="more than 2 chunked messages"):
        reassembler.receive(start(3, b"c"))
    assert reassembler.receive(start(4, b"whole", end=True)) == b"whole"  # holds nothing
    reassembler.abort(1)
    assert reassembler.receive(start(3, b"c")) is None


def test_declared_size_must_match() -> None:
    reassembler = Reassembler(max_message_bytes=100)
    reassembler.receive(start(1, b"abc", total=5))
    with pytest.raises(RemoteOverlayError, match="declared 5 bytes but carried 4"):
        reassembler.receive(more(1, b"d", end=True))
    reassembler.receive(start(2, b"abc", total=4))
    with pytest.raises(RemoteOverlayError, match="declared 4 bytes but carried at least 5"):
        reassembler.receive(more(2, b"de"))
    assert reassembler.open_streams == 0


@pytest.mark.parametrize(
    ("second", "reason"),
    [
        (start(1, b"again"), "started twice"),
        (more(1, b"x", total=9), "only a first chunk declares a size"),
        (more(2, b"x"), "stream 2, which is not open"),
    ],
)
def test_chunk_order_is_enforced(second: Chunk, reason: str) -> None:
    reassembler = Reassembler(max_message_bytes=100)
    reassembler.receive(start(1, b"abc"))
    with pytest.raises(RemoteOverlayError, match=reason):
        reassembler.receive(second)


def test_abort_forgets_a_partial_message() -> None:
    reassembler = Reassembler(max_message_bytes=100)
    reassembler.receive(start(7, b"abc"))
    reassembler.abort(7)
    reassembler.abort(7)  # unknown: no-op
    assert reassembler.buffered_bytes == 0
    assert reassembler.receive(start(7, b"new", end=True)) == b"new"


def test_reassembler_checks_its_limits() -> None:
    with pytest.raises(ValueError, match="max_message_bytes"):
        Reassembler(max_message_bytes=-1)
    with pytest.raises(ValueError, match="max_buffered_bytes"):
        Reassembler(max_message_bytes=1, max_buffered_bytes=-1)
    with pytest.raises(ValueError, match="max_streams"):
        Reassembler(max_message_bytes=1, max_streams=0)


chunk_values = st.builds(
    Chunk,
    stream_id=st.integers(1, 4),
    data=st.binary(max_size=40),
    first=st.booleans(),
    end_of_message=st.booleans(),
    total_bytes=st.none() | st.integers(0, 120),
)


@FAST
@given(chunks=st.lists(chunk_values, max_size=40))
def test_random_chunks_only_raise_the_protocol_error_and_stay_bounded(
    chunks: list[Chunk],
) -> None:
    reassembler = Reassembler(max_message_bytes=100, max_buffered_bytes=150, max_streams=3)
    for chunk in chunks:
        try:
            message = reassembler.receive(chunk)
        except RemoteOverlayError:
            pass
        else:
            assert message is None or len(message) <= 100
        assert reassembler.buffered_bytes <= 150
        assert reassembler.open_streams <= 3
