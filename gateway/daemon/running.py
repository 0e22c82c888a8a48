"""What the daemon's side services see of the running gateway: a typed face, not the daemon.

:class:`citygw.daemon.gateway.Gateway` builds the buffer, pipeline, uplinks and device health, and hands
itself to the services that run beside them (operations, health readings, remote config) as a
:class:`RunningGateway`. They depend on this face, the daemon on them: no import cycle, and each
service's needs are written down here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from citygw.buffer import Buffer
    from citygw.buffer.thread import Store
    from citygw.config import Config
    from citygw.daemon.reload import ReloadPlan
    from citygw.drivers.health import DeviceHealth
    from citygw.ops.sdnotify import Notifier
    from citygw.pipeline.intake import Pipeline


class RunningGateway(Protocol):
    """The running gateway's parts. ``config``, ``uplinks`` and ``health`` change on a reload
    (:meth:`apply`): read them when needed, do not keep them."""

    config: Config
    config_version: str
    buffer: Buffer
    store: Store
    pipeline: Pipeline
    notifier: Notifier

    @property
    def uplinks(self) -> Sequence[Any]:
        """The uplinks in effect, in config order."""
        ...

    @property
    def health(self) -> Mapping[str, DeviceHealth]:
        """Each device's health, by device id."""
        ...

    @property
    def bus_failures(self) -> Mapping[str, int]:
        """Expected failures of each bus task since start."""
        ...

    async def apply(self, new: Config) -> ReloadPlan:
        """Apply ``new`` in place; raises :class:`citygw.daemon.reload.ReloadRefused` when it cannot."""
        ...
