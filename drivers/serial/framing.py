"""Stream framers: cut a serial byte stream into frames, whatever the reads look like.

A UART hands over bytes in arbitrary pieces: a frame split across reads, several frames in one read,
the tail of a frame from before the port was opened, line noise. A framer is fed every piece in order
(``feed(data) -> (frames, rejects)``) and keeps only the bytes of a frame not yet complete (less than
one frame, so its memory is bounded). It finds frames by their start bytes and checks each whole
frame; a frame that fails its check is a :class:`Reject` (counted per device by the transport) and the
search resumes one byte after its start, so a real frame hidden behind a false start is still found.

Framers are pure: no I/O, no clock. They do not decode; :mod:`citygw.drivers.serial.decoders` does.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from citygw.drivers.serial.decoders import FixedFormat, split_sentence
from citygw.errors import DecodeError, Reason


class Reject(NamedTuple):
    """A frame found and refused: why (a :class:`~citygw.errors.Reason` value) and what."""

    reason: str
    detail: str


Fed = tuple[list[bytes], list[Reject]]


class Framer(Protocol):
    skipped: int  # bytes that were not part of a valid frame (noise, partial and refused frames)

    def feed(self, data: bytes) -> Fed:
        """The frames completed by ``data`` and the frames refused on the way."""
        ...


def _partial_sync(buf: bytes, start: int, sync: bytes) -> int:
    """How many bytes at the end of ``buf[start:]`` could be the beginning of ``sync``."""
    for keep in range(min(len(sync) - 1, len(buf) - start), 0, -1):
        if buf.endswith(sync[:keep]):
            return keep
    return 0


class FixedFramer:
    """Frames of a :class:`~citygw.drivers.serial.decoders.FixedFormat`: start bytes, fixed size, a check."""

    def __init__(self, fmt: FixedFormat) -> None:
        self.fmt = fmt
        self.skipped = 0
        self._rest = b""

    def feed(self, data: bytes) -> Fed:
        buf = self._rest + data if self._rest else bytes(data)
        sync, size, check = self.fmt.sync, self.fmt.size, self.fmt.check
        frames: list[bytes] = []
        rejects: list[Reject] = []
        end = len(buf)
        pos = 0
        skipped = 0
        while True:
            start = buf.find(sync, pos)
            if start < 0:
                keep = _partial_sync(buf, pos, sync)
                skipped += end - keep - pos
                pos = end - keep
                break
            skipped += start - pos
            if start + size > end:
                pos = start
                break
            frame = buf[start : start + size]
            reason = check(frame)
            if reason is None:
                frames.append(frame)
                pos = start + size
            else:
                rejects.append(Reject(reason.value, f"{self.fmt.name} frame {frame.hex(' ')}"))
                skipped += 1
                pos = start + 1
        self._rest = buf[pos:]
        self.skipped += skipped
        return frames, rejects


class LineFramer:
    """Lines ended by LF (a CR before it is dropped); blank lines are skipped.

    A line longer than ``max_length`` bytes is refused (reason ``long``) and dropped up to its end,
    so a device that stops sending newlines cannot grow the buffer.
    """

    def __init__(self, max_length: int = 1024) -> None:
        self.max_length = max_length
        self.skipped = 0
        self._rest = b""
        self._dropping = False  # inside a line already refused as too long

    def feed(self, data: bytes) -> Fed:
        buf = self._rest + data if self._rest else bytes(data)
        lines: list[bytes] = []
        rejects: list[Reject] = []
        pos = 0
        while (newline := buf.find(b"\n", pos)) >= 0:
            line = buf[pos:newline].rstrip(b"\r")
            pos = newline + 1
            if self._dropping:
                self._dropping = False
                self.skipped += len(line) + 1
            elif len(line) > self.max_length:
                rejects.append(self._too_long(line))
                self.skipped += len(line) + 1
            elif line.strip():
                lines.append(line)
        rest = buf[pos:]
        if len(rest) > self.max_length:
            if not self._dropping:
                rejects.append(self._too_long(rest))
            self._dropping = True
            self.skipped += len(rest)
            rest = b""
        self._rest = rest
        return self._frames(lines, rejects), rejects

    def _too_long(self, line: bytes) -> Reject:
        return Reject(Reason.LONG.value, f"a line of more than {self.max_length} bytes: {line[:40]!r}...")

    def _frames(self, lines: list[bytes], rejects: list[Reject]) -> list[bytes]:
        return lines


class NmeaFramer(LineFramer):
    """NMEA 0183 sentences: from the last ``$`` of a line to its end, with a valid ``*hh`` checksum.

    Bytes before the ``$`` (noise, a sentence cut off when the port opened) are skipped; a sentence
    with a wrong or missing checksum (or that is not ASCII text) is refused.
    """

    def __init__(self, max_length: int = 256) -> None:
        super().__init__(max_length)

    def _frames(self, lines: list[bytes], rejects: list[Reject]) -> list[bytes]:
        frames = []
        for line in lines:
            start = line.rfind(b"$")
            if start < 0:
                self.skipped += len(line)
                continue
            self.skipped += start
            sentence = line[start:].rstrip()
            try:
                split_sentence(sentence)  # the checksum, and text that can be split into fields
            except DecodeError as exc:
                rejects.append(Reject(exc.reason.value, f"NMEA sentence {sentence[:100]!r}: {exc.detail}"))
                self.skipped += len(sentence)
            else:
                frames.append(sentence)
        return frames
