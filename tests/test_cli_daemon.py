"""The command line and the daemon's lifecycle, as real subprocesses."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from citygw.buffer import BatchLimits, Buffer
from citygw.demo.broker import LocalBroker
from citygw.reading import Record
from citygw.wire.signing import Signer

from .support import Collector, Daemon, citygw, write_config

REPO = Path(__file__).resolve().parent.parent


def test_keygen_writes_a_private_key_and_prints_its_id(tmp_path: Path) -> None:
    out = tmp_path / "k.key"
    done = citygw("keygen", "--out", str(out))
    assert done.returncode == 0, done.stderr
    kid = done.stdout.strip()
    assert len(kid) == 43
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert Signer.from_file(out).kid == kid
    again = citygw("keygen", "--out", str(out))
    assert again.returncode == 1
    assert "--force" in again.stderr


def test_check_accepts_a_good_config(tmp_path: Path, key: Path) -> None:
    config = write_config(tmp_path / "c.yaml", key=key, port=1883, devices={"d1": {"bus": "gen"}})
    done = citygw("check", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert "ok: gateway gw-test, 1 buses, 1 devices, 1 uplinks" in done.stdout


def test_check_and_run_exit_78_naming_file_line_and_key(tmp_path: Path, key: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"gateway:\n  id: gw-1\n  key_file: {key}\nbuses:\n  gen:\n    type: synthetic\n"
        "devices:\n  d1:\n    bus: gen\n    rate: fast\n"
    )
    for command in ("check", "run"):
        done = citygw(command, "-c", str(config))
        assert done.returncode == 78, (command, done.stderr)
        assert f"{config}:10: devices.d1.rate: expected a number" in done.stderr
        assert "nothing was started" in done.stderr


def test_run_refuses_a_key_readable_by_others(tmp_path: Path, key: Path) -> None:
    key.chmod(0o644)
    config = write_config(tmp_path / "c.yaml", key=key, port=1883, devices={})
    done = citygw("run", "-c", str(config))
    assert done.returncode == 78
    assert "chmod 600" in done.stderr


def _batches(tmp_path: Path, key: Path) -> list[str]:
    buf = Buffer(
        tmp_path / "b.db",
        gateway="gw-1",
        signer=Signer.from_file(key),
        uplinks=[],
        limits=BatchLimits(max_readings=10),
    )
    buf.open()
    buf.commit([Record("d", "co2", 400 + i, "ppm", 1_790_000_000.0 + i, 0) for i in range(35)], seal_all=True)
    tokens = [b.jws for b in buf.fetch(0, 100)]
    buf.close()
    return tokens


def test_verify_accepts_a_chain_and_rejects_a_tampered_batch(tmp_path: Path, key: Path) -> None:
    tokens = _batches(tmp_path, key)
    pub = str(key) + ".pub"
    good = tmp_path / "good.jws"
    good.write_text("\n".join(tokens) + "\n")
    done = citygw("verify", "--key", pub, str(good))
    assert done.returncode == 0, done.stderr
    assert "verified 4 batches (35 readings), 0 duplicates, 0 bad" in done.stdout
    header, payload, sig = tokens[2].split(".")
    tampered = [*tokens[:2], f"{header}.{payload[:-2]}AA.{sig}", *tokens[3:]]
    done = citygw("verify", "--key", pub, stdin="\n".join(tampered) + "\n")
    assert done.returncode == 1
    assert "bad signature" in done.stderr


def test_daemon_notifies_systemd_and_stops_cleanly(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    messages: list[str] = []
    done = threading.Event()

    def listen() -> None:  # like systemd: drain the socket all the time
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                messages.append(sock.recv(4096).decode())

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    config = write_config(
        tmp_path / "c.yaml", key=key, port=broker.port, devices={"d1": {"bus": "gen", "rate": 100}}
    )
    daemon = daemon_factory(config)
    os.environ["NOTIFY_SOCKET"] = str(sock_path)
    os.environ["WATCHDOG_USEC"] = "1000000"
    try:
        daemon.start()
    finally:
        del os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"]
    collector.wait(lambda c: c.readings() > 0, 30, "readings")
    assert "READY=1" in messages[0]
    assert any("STATUS=accepted" in m for m in messages)
    assert sum("WATCHDOG=1" in m for m in messages) >= 2
    started = time.monotonic()
    assert daemon.terminate() == 0
    assert time.monotonic() - started < 5
    time.sleep(0.3)
    done.set()
    listener.join()
    assert any("STOPPING=1" in m for m in messages)
    log = (tmp_path / "daemon.log").read_text()
    assert "stopped in" in log


def test_version_help_and_usage_errors() -> None:
    done = citygw("--version")
    assert done.returncode == 0 and done.stdout.startswith("citygw ")
    done = citygw("--help")
    assert done.returncode == 0 and "keygen" in done.stdout
    assert citygw("no-such-command").returncode == 2
