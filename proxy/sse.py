"""Incremental, sans-io decoder for ``text/event-stream`` bodies.

It follows the WHATWG HTML "event stream interpretation" rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- a line ends at CRLF, LF or a lone CR; a CRLF split across two chunks is still one line end;
- one UTF-8 byte order mark at the very start of the stream is dropped (also when split);
- an empty line dispatches the event being built, if it has at least one ``data`` line;
- a line starting with ``:`` is a comment; otherwise the field name runs up to the first ``:``
  and one space after that colon is removed from the value; a line without ``:`` is a field
  with an empty value; unknown field names are ignored;
- ``data`` lines are joined with ``\\n``; ``event`` sets the type (empty means ``"message"``);
  ``id`` sets the last event id unless the value contains NUL, and it persists across events;
  ``retry`` is kept only when it is all ASCII digits;
- at end of stream an event without its closing empty line is discarded.

Bytes are never assumed to arrive on any boundary: chunks may split lines, CRLF pairs and UTF-8
sequences. Invalid UTF-8 is decoded with U+FFFD replacement (per line, which gives the same result
as decoding the whole stream first, because line ends are ASCII). The decoder works on bytes and
splits with C-level ``bytes`` methods; the only Python loop is one iteration per line.

Two additions for capture, both outside the WHATWG event model: ``SSEEvent.retry`` is the
``retry`` value given inside that event's block (WHATWG only sets the source's reconnection
time, kept here as ``SSEDecoder.retry``), and ``SSEDecoder.pending`` says whether the stream
stopped in the middle of an event, which a capture of a cut stream wants to record.
``close(dispatch_incomplete=True)`` dispatches that unfinished event instead of dropping it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEDecoder", "SSEEvent"]

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched server-sent event.

    ``id`` is the last event id in force when the event was dispatched (``None`` until the
    stream sets one; ``""`` after an empty ``id:``). ``retry`` is the valid ``retry`` value
    given in this event's own block, if any.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed raw body bytes in any chunking; get back the events completed so far.

    >>> decoder = SSEDecoder()
    >>> decoder.feed(b"data: hel")
    []
    >>> decoder.feed(b"lo\\r\\n\\r\\n")
    [SSEEvent(data='hello', event='message', id=None, retry=None)]
    >>> decoder.close()
    []
    """

    __slots__ = (
        "_at_start",
        "_block_retry",
        "_closed",
        "_data",
        "_event",
        "_last_id",
        "_line",
        "_pending_at_close",
        "_skip_lf",
        "retry",
    )

    def __init__(self) -> None:
        self._line = bytearray()  # bytes of the current, unterminated line
        self._at_start = True  # a BOM may still be (partly) ahead
        self._skip_lf = False  # the last line ended in CR: a LF right after it is part of it
        self._data: list[bytes] = []
        self._event = b""
        self._block_retry: int | None = None
        self._last_id: str | None = None
        self._closed = False
        self._pending_at_close = False
        self.retry: int | None = None
        """The stream's reconnection time in ms: the last valid ``retry`` field seen."""

    @property
    def pending(self) -> bool:
        """True when an unfinished line or an undispatched event (data or type) is buffered.

        After ``close()`` it keeps the value it had when the stream ended.
        """
        if self._closed:
            return self._pending_at_close
        return bool(self._line or self._data or self._event)

    @property
    def last_event_id(self) -> str | None:
        """The last event id set by the stream, or None if it never sent a valid ``id``."""
        return self._last_id

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk`` and return the events it completed, in order."""
        if self._closed:
            raise RuntimeError("SSEDecoder.feed() called after close()")
        if self._at_start:
            head = bytes(self._line) + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._line[:] = head  # could still become a BOM: wait for more bytes
                return []
            self._at_start = False
            self._line.clear()
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        has_cr = b"\r" in chunk
        if not has_cr and b"\n" not in chunk:
            self._line += chunk
            return []
        if self._line:
            chunk = bytes(self._line) + chunk
            self._line.clear()
        if has_cr:
            if chunk[-1] == 0x0D:
                self._skip_lf = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        self._line += lines.pop()
        return self._process(lines)

    def close(self, *, dispatch_incomplete: bool = False) -> list[SSEEvent]:
        """Signal end of stream and return the events that completes.

        Per WHATWG an event missing its closing empty line is discarded, so this returns ``[]``
        unless ``dispatch_incomplete`` is true: then a final unterminated line is taken as
        complete and the event being built is dispatched. ``pending`` keeps its value, so a
        caller can still tell that the stream was cut mid-event.
        """
        if self._closed:
            return []
        self._pending_at_close = self.pending
        self._closed = True
        if not dispatch_incomplete:
            return []
        lines = [bytes(self._line), b""] if self._line else [b""]
        self._line.clear()
        return self._process(lines)

    def _process(self, lines: list[bytes]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if line.startswith(b"data:"):  # the common lines first; "data" holds no colon
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif not line:
                if data:
                    event = self._event
                    events.append(
                        SSEEvent(
                            b"\n".join(data).decode("utf-8", "replace"),
                            event.decode("utf-8", "replace") if event else "message",
                            self._last_id,
                            self._block_retry,
                        )
                    )
                    data.clear()
                self._event = b""
                self._block_retry = None
            elif line.startswith(b"event:"):
                self._event = line[7:] if line[6:7] == b" " else line[6:]
            elif line[0] != 0x3A:  # not a ":" comment
                self._process_field(line)
        return events

    def _process_field(self, line: bytes) -> None:
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._block_retry = self.retry = int(value)
