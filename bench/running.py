"""``citygw run`` as the benches measure it: a subprocess with the environment
systemd/citygw.service gives the daemon (``MALLOC_ARENA_MAX=2``), started once it says READY."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from citygw.pipeline.clock import TEST_CLOCK_FILE

REPO = Path(__file__).resolve().parent.parent


def start_daemon(
    config: Path, workdir: Path, *, ready_within: float = 30.0, synced: bool = True
) -> subprocess.Popen[bytes]:
    """Start ``citygw run -c config`` and return it once it has sent READY=1 (sd_notify).

    ``synced`` False: the clock reads as not yet synchronised, so every reading is flagged
    ``clock-unsynced`` (a box in its first minutes, or one that never reaches NTP)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(workdir / "notify.sock"))
        notify.settimeout(ready_within)
        env = dict(os.environ, NOTIFY_SOCKET=str(workdir / "notify.sock"), MALLOC_ARENA_MAX="2")
        # a pole's clock is NTP-synchronised; a VM's may say it is not, which would flag every
        # reading clock-unsynced (about 36 more bytes per reading on the wire): measure the normal case
        (workdir / "clock").write_text("synced\n" if synced else "unsynced\n")
        env[TEST_CLOCK_FILE] = str(workdir / "clock")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "citygw", "run", "-c", str(config), "--log-level", "warning"],
            cwd=REPO,
            env=env,
        )
        while b"READY=1" not in notify.recv(4096):
            pass
    return daemon  # later sd_notify messages find no socket; the daemon ignores that
