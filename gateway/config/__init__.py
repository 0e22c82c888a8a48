"""The citygw config: a YAML file validated as a whole before anything starts.

:func:`load_config` reads a file into a frozen :class:`Config` or raises
:class:`~citygw.errors.ConfigError` listing every problem, each with file, line, key and what is
allowed. ``config/example.yaml`` is the annotated reference.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from citygw.config.base import LogLevel, Synchronous
from citygw.config.loader import load
from citygw.config.model import (
    BUS_MODELS,
    DEVICE_MODELS,
    UPLINK_MODELS,
    BatchSettings,
    BufferSettings,
    Bus,
    Config,
    Device,
    GatewaySettings,
    LogSettings,
    MqttUplink,
    SyntheticBus,
    SyntheticDevice,
    Uplink,
    default_buffer_path,
)
from citygw.config.units import Duration, Size, parse_duration, parse_size

__all__ = [
    "BUS_MODELS",
    "DEVICE_MODELS",
    "UPLINK_MODELS",
    "BatchSettings",
    "BufferSettings",
    "Bus",
    "Config",
    "Device",
    "Duration",
    "GatewaySettings",
    "LogLevel",
    "LogSettings",
    "MqttUplink",
    "Size",
    "Synchronous",
    "SyntheticBus",
    "SyntheticDevice",
    "Uplink",
    "default_buffer_path",
    "load_config",
    "parse_duration",
    "parse_size",
]


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at ``path``.

    ``environ`` (default :data:`os.environ`) supplies ``${VAR}`` values and ``STATE_DIRECTORY``.
    Raises :class:`~citygw.errors.ConfigError` carrying every problem found.
    """
    return load(path, environ=os.environ if environ is None else environ)
