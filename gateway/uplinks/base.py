"""What every uplink reports about itself."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class UplinkState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(slots=True)
class UplinkStatus:
    name: str
    state: UplinkState = UplinkState.CONNECTING
    connects: int = 0
    acked_seq: int = 0
    delivered_batches: int = 0
    delivered_readings: int = 0
    last_error: str = ""
