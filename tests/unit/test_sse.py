"""The SSE decoder against the framings servers really send, fed bytes split anywhere."""

from hypothesis import given
from hypothesis import strategies as st

from haystack_integrations.generators.hugging_face_api._sse import SSEDecoder


def decode(*blocks: bytes) -> list[bytes]:
    decoder = SSEDecoder()
    return [data for block in blocks for data in decoder.feed(block)]


def test_with_and_without_space_after_colon() -> None:
    assert decode(b'data: {"a":1}\n\ndata:{"b":2}\n\n') == [b'{"a":1}', b'{"b":2}']


def test_crlf_line_endings() -> None:
    assert decode(b"data: x\r\n\r\ndata: y\r\n\r\n") == [b"x", b"y"]


def test_keep_alive_comments_and_other_fields_are_ignored() -> None:
    assert decode(b": keep-alive\n\nevent: message\nid: 7\nretry: 100\ndata: x\n\n:\n\n") == [b"x"]


def test_multi_line_data_is_joined_and_done_is_passed_on() -> None:
    assert decode(b"data: a\ndata: b\n\ndata: [DONE]\n\n") == [b"a\nb", b"[DONE]"]


def test_an_event_exists_only_once_its_blank_line_arrived() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"x": 1}\n') == []
    assert decoder.pending
    assert decoder.feed(b"\n") == [b'{"x": 1}']
    assert not decoder.pending


def test_a_stream_cut_inside_an_event_leaves_it_out() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n\ndata: {"tok') == [b'{"a":1}']
    assert decoder.pending  # the half event is never handed out


def test_only_one_space_is_stripped() -> None:
    assert decode(b"data:  two\n\n") == [b" two"]


@given(
    st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=20),
    st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_any_split_of_any_data_round_trips(values: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(b"data: " + value + b"\n\n" for value in values)
    points = sorted({min(cut, len(stream)) for cut in cuts})
    blocks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert decode(*blocks) == values
