"""A throwaway mosquitto on loopback, for the demo, the tests and the benchmarks.

Not used by the daemon. Needs the ``mosquitto`` binary (Debian package ``mosquitto``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from citygw.errors import CitygwError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise CitygwError("mosquitto is not installed (Debian: apt-get install mosquitto)")


class LocalBroker:
    """mosquitto listening on 127.0.0.1:port; can be stopped and started again on the same port."""

    def __init__(
        self,
        port: int | None = None,
        *,
        workdir: Path | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """``tls``: (CA file, server certificate, server key) to listen with TLS instead of plain TCP."""
        self.port = port or free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="citygw-broker-")
            workdir = Path(self._tmp.name)
        self.workdir: Path = workdir
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 0\n"
            "max_inflight_messages 0\n"
            "max_queued_messages 1000000\n"
            "log_dest stderr\n"
            "log_type error\n"
        )
        if os.geteuid() == 0:  # mosquitto started as root drops to user mosquitto, who cannot read our files
            with self.conf.open("a") as conf:
                conf.write("user root\n")
        if tls is not None:
            cafile, certfile, keyfile = tls
            with self.conf.open("a") as conf:
                conf.write(f"cafile {cafile}\ncertfile {certfile}\nkeyfile {keyfile}\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "mosquitto.log").open("ab"),
            start_new_session=True,  # a Ctrl-C at the terminal is for us, not the broker: we stop it
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CitygwError(f"mosquitto exited at start: see {self.workdir / 'mosquitto.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise CitygwError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()
