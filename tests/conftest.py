"""Shared fixtures: a real mosquitto, real keys on disk, the daemon as a real subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from citygw.demo.broker import LocalBroker
from citygw.wire.signing import generate_key

from .support import Collector, Daemon


@pytest.fixture(autouse=True)
def synced_clock(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system clock counts as NTP-synchronised (gateway.clock), whatever this machine's state:
    a CI box without NTP would otherwise flag every reading. Tests of the clock rewrite the file."""
    path = tmp_path_factory.mktemp("clock") / "state"
    path.write_text("synced\n")
    monkeypatch.setenv("CITYGW_TEST_CLOCK_FILE", str(path))
    return path


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = LocalBroker(workdir=workdir)
    b.start()
    yield b
    b.close()


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "signing.key"
    generate_key(path)
    return path


@pytest.fixture
def collector(broker: LocalBroker) -> Iterator[Collector]:
    c = Collector(broker.port, "city/+/batches")  # subscribed: it waited for the SUBACK
    yield c
    c.close()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[[Path], Daemon]]:
    made: list[Daemon] = []

    def make(config: Path) -> Daemon:
        d = Daemon(config, tmp_path / "daemon.log")
        made.append(d)
        return d

    yield make
    for d in made:
        if d.alive():
            assert d.proc is not None
            d.proc.kill()
            d.proc.wait()
        d.close_notify()
