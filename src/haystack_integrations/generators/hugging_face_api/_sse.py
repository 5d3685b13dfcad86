"""
Server-sent events, as inference servers actually write them, decoded from the bytes as they arrive.

Accepted: `data:` with or without the space after the colon (TGI < 2.1 wrote none), `\\n` or `\\r\\n`
line endings, `:` comment lines (TGI's keep-alives), other fields (`event:`, `id:`, `retry:`) which
carry nothing we need, and multi-line data. An event exists only once its blank line has arrived: a
stream that ends inside an event (a connection cut halfway through `data: {...}`) leaves that event
out, as the SSE standard says, so the cut is seen as a cut and not as a malformed event. `[DONE]` is
returned as data like any other: the protocol layer decides what it means.
"""

from __future__ import annotations


class SSEDecoder:
    """Turns blocks of bytes, split anywhere, into the data of complete events."""

    __slots__ = ("_data", "_partial")

    def __init__(self) -> None:
        self._partial = b""  # the start of a line whose end has not arrived yet
        self._data: list[bytes] = []  # the data lines of the event being read

    def feed(self, block: bytes) -> list[bytes]:
        """Adds bytes of the stream; returns the data of the events they complete, in order."""
        if (  # what servers send most: one whole `data: ` event per block
            not self._partial
            and not self._data
            and block.startswith(b"data: ")
            and block.endswith(b"\n\n")
            and block.find(b"\n") == len(block) - 2
        ):
            return [block[6:-2]]
        if self._partial:
            block = self._partial + block
        lines = block.split(b"\n")
        self._partial = lines.pop()
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # a blank line ends the event
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            # comments (":...") and the fields we do not use carry nothing
        return events

    @property
    def pending(self) -> bool:
        """Whether part of an event has arrived without its blank line."""
        return bool(self._data or self._partial)
