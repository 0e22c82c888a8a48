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


class DecodeError(CitygwError):
    """Bytes (or registers) a decoder cannot read. ``reason`` says why in one word: a member of
    the decoder layer's own ``Reason`` enum (BLE adverts, serial frames, Modbus registers), used as
    a key of :attr:`citygw.drivers.health.DeviceHealth.errors`; ``detail`` says it in a sentence."""

    def __init__(self, reason: enum.StrEnum, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")
