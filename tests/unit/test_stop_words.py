"""The stop-word trimmer: streamed and one-piece trimming agree for every split of every text."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from haystack_integrations.generators.hugging_face_api._stop import StopWordFilter, cut_at_stop_words

# A small alphabet makes stop words occur, overlap and straddle pieces often.
alphabet = st.sampled_from("ab c\n.")
texts = st.text(alphabet, max_size=40)
stop_lists = st.lists(st.text(alphabet, min_size=1, max_size=4), max_size=4)


@st.composite
def split_text(draw: st.DrawFn) -> list[str]:
    text = draw(texts)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def stream(pieces: list[str], stop_words: list[str]) -> tuple[list[str], bool]:
    trimmer = StopWordFilter(stop_words)
    emitted = [trimmer.feed(piece) for piece in pieces]
    if not trimmer.stopped:
        emitted.append(trimmer.flush())
    return emitted, trimmer.stopped


@settings(max_examples=2000)
@given(split_text(), stop_lists)
def test_streamed_equals_one_piece(pieces: list[str], stop_words: list[str]) -> None:
    emitted, stopped = stream(pieces, stop_words)
    expected, expected_stopped = cut_at_stop_words("".join(pieces), stop_words)
    assert "".join(emitted) == expected
    assert stopped == expected_stopped
    assert not any(word in "".join(emitted) for word in stop_words)


@settings(max_examples=500)
@given(split_text(), stop_lists)
def test_holds_back_only_what_could_become_a_stop_word(pieces: list[str], stop_words: list[str]) -> None:
    trimmer = StopWordFilter(stop_words)
    seen = ""
    released = ""
    for piece in pieces:
        seen += piece
        released += trimmer.feed(piece)
        if trimmer.stopped:
            return
        held = seen[len(released) :]
        # What is held is a (proper) beginning of some stop word, and nothing more.
        assert seen.startswith(released)
        assert held == "" or any(word.startswith(held) and word != held for word in stop_words)


def test_stop_word_split_across_events() -> None:
    emitted, stopped = stream(["The answer", " is 4", "2.\nUs", "er: more"], ["\nUser:"])
    assert emitted == ["The answer", " is 4", "2.", ""]
    assert stopped


def test_no_stop_words_passes_everything_through() -> None:
    trimmer = StopWordFilter([])
    assert [trimmer.feed(p) for p in ["a", "b"]] == ["a", "b"]
    assert trimmer.flush() == ""


def test_earliest_of_several_stop_words_wins() -> None:
    assert cut_at_stop_words("one. two! three", ["!", "."]) == ("one", True)
