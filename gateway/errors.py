"""The error hierarchy: every error citygw raises on purpose derives from :class:`CitygwError`."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class CitygwError(Exception):
    """Root of every error citygw raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config file, located for the person who has to fix it."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key or '(top level)'}: {self.message}"


class ConfigError(CitygwError):
    """The config cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class KeyFileError(CitygwError):
    """A signing key file is missing, unreadable, malformed or too widely readable."""


class BufferStorageError(CitygwError):
    """The durable buffer cannot be opened or written."""


class DeliveryError(CitygwError):
    """An uplink could not deliver a batch now; retrying later may succeed."""


class VerificationError(CitygwError):
    """A signed batch failed verification: bad signature, broken chain or malformed pack."""


class BufferOwnerError(BufferStorageError):
    """The buffer file was written by another gateway id: it is not adopted (exit 78)."""


class Reason(enum.StrEnum):
    """Why a decoder refused its input, in one word: the keys of
    :attr:`citygw.drivers.health.DeviceHealth.errors`, so the ``reason`` label of
    ``citygw_device_errors_total`` and the errors of ``citygw status`` (docs/operations.md). The
    values are part of that contract: never change one. Each member says which decoder layer uses it
    (BLE adverts, serial frames, Modbus registers)."""

    SHORT = "short"
    """BLE, serial: fewer bytes than the format needs (an advert, frame or object cut short)."""
    LONG = "long"
    """Serial: more bytes than the format's frame, or a line over the length limit."""
    LENGTH = "length"
    """BLE, serial: a length the format does not have (an advert of a size no layout has, a frame
    whose own length field is not the format's)."""
    FORMAT = "format"
    """BLE: not this format (format byte, version)."""
    HEADER = "header"
    """Serial: not this format's start bytes (or sentence start)."""
    CHECKSUM = "checksum"
    """Serial: the checksum does not match, or is missing."""
    TRAILER = "trailer"
    """Serial: not this format's end byte."""
    SYNTAX = "syntax"
    """Serial: text that is not in the expected form."""
    VALUE = "value"
    """BLE, serial: a field holds something the spec does not allow (out of its range, of the wrong
    kind, text that is not UTF-8)."""
    UNKNOWN_OBJECT = "unknown-object"
    """BLE: a BTHome object id not in the table, so the rest is unreadable."""
    NO_KEY = "no-key"
    """BLE: an encrypted advert and no bindkey to read it."""
    DECRYPT = "decrypt"
    """BLE: the MIC does not match: wrong bindkey, wrong address or a forged advert."""
    PLAINTEXT = "plaintext"
    """BLE: a plaintext advert from a device that has a bindkey (downgrade refused)."""
    ENCRYPTED = "encrypted"
    """BLE: an encrypted variant of a format that citygw does not read."""
    EMPTY = "empty"
    """BLE: a well-formed advert with no value in it (every field marked not available)."""
    DECODE = "decode"
    """Modbus: registers that cannot be the value they are declared to hold."""


class DecodeError(CitygwError):
    """Bytes (or registers) a decoder cannot read. ``reason`` says why in one word (a
    :class:`Reason`, used as a key of :attr:`citygw.drivers.health.DeviceHealth.errors`); ``detail``
    says it in a sentence."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")
