"""The SSE decoder against the framings servers really send."""

from hypothesis import given
from hypothesis import strategies as st

from haystack_integrations.generators.hugging_face_api._sse import SSEDecoder


def decode(lines: list[str]) -> list[str]:
    decoder = SSEDecoder()
    events = [data for line in lines if (data := decoder.feed(line)) is not None]
    tail = decoder.flush()
    return [*events, tail] if tail is not None else events


def test_with_and_without_space_after_colon() -> None:
    assert decode(['data: {"a":1}', "", 'data:{"b":2}', ""]) == ['{"a":1}', '{"b":2}']


def test_keep_alive_comments_and_other_fields_are_ignored() -> None:
    lines = [": keep-alive", "", "event: message", "id: 7", "retry: 100", "data: x", "", ":", ""]
    assert decode(lines) == ["x"]


def test_multi_line_data_is_joined_and_done_is_passed_on() -> None:
    assert decode(["data: a", "data: b", "", "data: [DONE]", ""]) == ["a\nb", "[DONE]"]


def test_last_event_without_blank_line_is_kept() -> None:
    assert decode(['data: {"x": 1}']) == ['{"x": 1}']


def test_only_one_space_is_stripped() -> None:
    assert decode(["data:  two", ""]) == [" two"]


@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")), max_size=20))
def test_any_lines_never_crash_and_data_round_trips(values: list[str]) -> None:
    lines = [line for value in values for line in (f"data: {value}", "")]
    assert decode(lines) == values
