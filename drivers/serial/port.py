"""Why a serial port cannot be opened, in words a technician can act on.

A port that does not open is not a silent device: advice on unit ids, baud rates and A/B wiring
sends the technician the wrong way. :func:`diagnose` names the cause (``no-port``: no such device;
``permission``: the user may not open it; ``busy``: another program holds it; ``port``: anything
else) and its fix: what ``/dev/serial/by-id`` shows, or the group the user must join. It is shared
by the Modbus RTU link, the serial transport, ``citygw probe``, ``scan`` and ``status``.

No pyserial, no asyncio: a stat, at most one ``open`` of the device file, and the group database.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

BY_ID = Path("/dev/serial/by-id")
SHOWN = 8  # names of /dev/serial/by-id listed at most

FIXES = {
    "no-port": "plug the adapter in, or set the bus's port to one of /dev/serial/by-id (`ls -l "
    "/dev/serial/by-id`)",
    "permission": "add the user the gateway runs as to the port's group (dialout): `sudo usermod -aG dialout "
    "USER`, then restart the service or log in again (the citygw service user is in dialout)",
    "busy": "stop the other program that holds the port (`sudo fuser -v PORT` names it)",
}
"""The fix for each cause, without the names only the box knows (for ``status``)."""


@dataclass(frozen=True, slots=True)
class PortProblem:
    """Why ``port`` did not open: ``reason`` (one word, counted per device), the cause and its fix."""

    port: str
    reason: str
    cause: str
    fix: str

    def __str__(self) -> str:
        return f"{self.cause}; {self.fix}" if self.fix else self.cause


def _by_id(by_id: Path) -> str:
    try:
        names = sorted(p.name for p in by_id.iterdir())
    except OSError:
        return f"{by_id} does not exist: no USB serial adapter is plugged in"
    if not names:
        return f"{by_id} is empty: no USB serial adapter is plugged in"
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{by_id} has: " + ", ".join(names[:SHOWN]) + more


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _no_port(port: str, by_id: Path) -> PortProblem:
    path = Path(port)
    if path.is_symlink():
        cause = f"no such device: {port} points to {os.readlink(path)}, which does not exist"
    else:
        cause = f"no such device: {port}"
    return PortProblem(
        port,
        "no-port",
        f"{cause} ({_by_id(by_id)})",
        "plug the adapter in, or set the bus's port to one of those",
    )


def _permission(port: str) -> PortProblem:
    user = _user()
    try:
        info = os.stat(port)
    except OSError:
        return PortProblem(
            port, "permission", f"permission denied on {port} for user {user}", FIXES["permission"]
        )
    group = _group(info.st_gid)
    owner = f"owner {_user_name(info.st_uid)}, group {group}, mode {stat.filemode(info.st_mode)}"
    return PortProblem(
        port,
        "permission",
        f"permission denied on {port} for user {user} ({owner})",
        f"add {user} to group {group}: `sudo usermod -aG {group} {user}`, then restart the service or log "
        "in again (the citygw service user is in dialout)",
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def diagnose(port: str, error: BaseException | None = None, *, by_id: Path = BY_ID) -> PortProblem | None:
    """Why ``port`` cannot be opened, from ``error`` (the open's own failure) when it says, else by
    trying to open the device file; ``None`` when it opens (the trouble is elsewhere)."""
    code = getattr(error, "errno", None)
    if code is None:
        if not os.path.exists(port):
            return _no_port(port, by_id)
        try:
            fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            code, error = exc.errno, exc
        else:
            os.close(fd)
            return None
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return _no_port(port, by_id)
    if code in (errno.EACCES, errno.EPERM):
        return _permission(port)
    if code in (errno.EBUSY, errno.EAGAIN):  # EAGAIN: another program holds the exclusive lock
        return PortProblem(
            port, "busy", f"{port} is in use by another program", FIXES["busy"].replace("PORT", port)
        )
    text = os.strerror(code) if isinstance(code, int) else str(error)
    return PortProblem(port, "port", f"cannot open {port}: {text}", "")
