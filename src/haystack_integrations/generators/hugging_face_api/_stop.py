"""
Client-side stop words.

Servers stop *after* a stop word and keep it in the text (TGI, transformers serve), or miss it when it
does not end on a token boundary. The reply must end right before the first stop word, whether it
arrives in one piece or streamed across many events, so both paths share this module.
"""

from __future__ import annotations

from collections.abc import Sequence


def find_stop(text: str, stop_words: Sequence[str]) -> int:
    """
    Returns where the reply ends because of a stop word, or -1.

    Generation stops at the stop word that is *completed* first, as a server checks after each token,
    so the winner is the occurrence that ends earliest (then the longest); the reply ends at its start.
    """
    best_end = best_start = -1
    for word in stop_words:
        start = text.find(word)
        if start == -1:
            continue
        end = start + len(word)
        if best_end == -1 or end < best_end or (end == best_end and start < best_start):
            best_end, best_start = end, start
    return best_start


def cut_at_stop_words(text: str, stop_words: Sequence[str]) -> tuple[str, bool]:
    """Returns `text` cut before the first completed stop word, and whether one was found."""
    index = find_stop(text, stop_words)
    return (text, False) if index == -1 else (text[:index], True)


class StopWordFilter:
    """
    Incremental version of `cut_at_stop_words` for streams.

    `feed` returns the part of the text that is safe to emit. It holds back only the longest tail that
    is still the beginning of some stop word, because only that tail can turn into a stop word once
    more text arrives. The concatenation of everything `feed` and `flush` return equals
    `cut_at_stop_words(whole_text)[0]`, however the text was split.
    """

    __slots__ = ("_held", "_max_held", "_prefixes", "_stop_words", "stopped")

    def __init__(self, stop_words: Sequence[str]) -> None:
        self._stop_words = tuple(stop_words)
        # Every proper prefix of every stop word: the tails worth holding back.
        self._prefixes = frozenset(word[:i] for word in self._stop_words for i in range(1, len(word)))
        self._max_held = max((len(word) - 1 for word in self._stop_words), default=0)
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Adds streamed text; returns what can be emitted now ("" once a stop word has been seen)."""
        if self.stopped:
            return ""
        if not self._stop_words:
            return piece
        text = self._held + piece
        index = find_stop(text, self._stop_words)
        if index != -1:
            self.stopped = True
            self._held = ""
            return text[:index]
        for size in range(min(self._max_held, len(text)), 0, -1):
            if text[-size:] in self._prefixes:
                self._held = text[-size:]
                return text[:-size]
        self._held = ""
        return text

    def flush(self) -> str:
        """Returns the held-back tail at the end of the stream: it never became a stop word."""
        held, self._held = self._held, ""
        return held
