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

from ._http import MAX_RESPONSE_BYTES
from .errors import ResponseFormatError


class SSEDecoder:
    """
    Turns blocks of bytes, split anywhere, into the data of complete events.

    A line that has not ended yet is kept in pieces and joined once, when its end arrives, so a long line costs
    time in proportion to its length; an event longer than `MAX_RESPONSE_BYTES` is refused, as a one-piece
    answer is.
    """

    __slots__ = ("_data", "_partial", "_pending_bytes")

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # the pieces of a line whose end has not arrived yet
        self._data: list[bytes] = []  # the data lines of the event being read
        self._pending_bytes = 0  # what the partial line and the event's data lines hold

    def feed(self, block: bytes) -> list[bytes]:
        """
        Adds bytes of the stream; returns the data of the events they complete, in order.

        :raises ResponseFormatError: When an event grows past `MAX_RESPONSE_BYTES`.
        """
        if (  # what servers send most: one whole `data: ` event per block
            not self._partial
            and not self._data
            and block.startswith(b"data: ")
            and block.endswith(b"\n\n")
            and block.find(b"\n") == len(block) - 2
        ):
            return [block[6:-2]]
        end = block.rfind(b"\n")
        if end == -1:  # no line ends here: keep the piece
            self._hold(block)
            return []
        if self._partial:
            self._partial.append(block[: end + 1])
            block = b"".join(self._partial) + block[end + 1 :]
            self._partial = []
            self._pending_bytes = sum(len(line) for line in self._data)
        lines = block.split(b"\n")
        tail = lines.pop()
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # a blank line ends the event
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
                    self._pending_bytes = 0
            elif line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
                self._grow(len(line))
            # comments (":...") and the fields we do not use carry nothing
        if tail:
            self._hold(tail)
        return events

    def _hold(self, piece: bytes) -> None:
        self._partial.append(piece)
        self._grow(len(piece))

    def _grow(self, size: int) -> None:
        self._pending_bytes += size
        if self._pending_bytes > MAX_RESPONSE_BYTES:
            raise ResponseFormatError(
                f"The server sent a stream event of more than {MAX_RESPONSE_BYTES} bytes; refused"
            )

    @property
    def pending(self) -> bool:
        """Whether part of an event has arrived without its blank line."""
        return bool(self._data or self._partial)
