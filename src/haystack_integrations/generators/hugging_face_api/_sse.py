"""
Server-sent events, as inference servers actually write them.

Accepted: `data:` with or without the space after the colon (TGI < 2.1 wrote none), `:` comment lines
(TGI's keep-alives), other fields (`event:`, `id:`, `retry:`) which carry nothing we need, multi-line
data, and a last event not followed by a blank line. `[DONE]` is returned as data like any other: the
protocol layer decides what it means.
"""

from __future__ import annotations


class SSEDecoder:
    """Turns lines (without their line ending) into the data of complete events."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """Adds one line; returns the event's data when this line completes an event."""
        if line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
            return None
        if not line:  # a blank line ends the event
            return self.flush()
        return None  # comments (":...") and fields we do not use

    def flush(self) -> str | None:
        """Returns the data of an event left open when the stream ended, if any."""
        if not self._data:
            return None
        data = self._data[0] if len(self._data) == 1 else "\n".join(self._data)
        self._data.clear()
        return data
