"""A network partition: the daemon in its own network namespace, the broker behind a veth pair.

The link is cut silently (both ends drop every packet: no RST, no ICMP) while the daemon
publishes; MQTT keepalive notices, the uplink reconnects with backoff once the link is back,
and every reading arrives, verified and chained. Needs root for ``ip netns``/``tc``: skipped
otherwise. The short form cuts for 15 s; the long one (``-m long``) for a minute.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from citygw.demo.broker import LocalBroker

from .netns import NetnsError, VethNamespace
from .support import Collector, Daemon, verify_all, write_config


@pytest.fixture
def netns() -> Iterator[VethNamespace]:
    ns = VethNamespace()
    try:
        ns.create()
    except (NetnsError, FileNotFoundError) as exc:
        ns.close()
        pytest.skip(f"cannot make a network namespace here (root and iproute2 are needed): {exc}")
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def ns_broker(tmp_path: Path, netns: VethNamespace) -> Iterator[LocalBroker]:
    """mosquitto on 127.0.0.1 (the collector) and on the veth's outer address (the daemon)."""
    (tmp_path / "broker").mkdir()
    broker = LocalBroker(workdir=tmp_path / "broker")
    with broker.conf.open("a") as conf:
        conf.write(f"listener {broker.port} {netns.outer_ip}\n")
    broker.start()
    yield broker
    broker.close()


def since(log: Path, offset: int) -> str:
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def partition_run(tmp_path: Path, key: Path, netns: VethNamespace, broker: LocalBroker, cut_s: float) -> None:
    collector = Collector(broker.port, "city/+/batches")
    time.sleep(0.2)
    rate, count = 2_000, int(2_000 * (cut_s + 4))
    config = write_config(
        tmp_path / "config.yaml",
        key=key,
        port=broker.port,
        devices={"load-1": {"bus": "gen", "rate": rate, "count": count, "values": "sequence"}},
        uplinks={
            "local": {
                "type": "mqtt",
                "url": f"mqtt://{netns.outer_ip}:{broker.port}",
                "keepalive": "5s",
                "connect_timeout": "3s",
                "backoff_initial": "200ms",
                "backoff_max": "2s",
            }
        },
    )
    log = tmp_path / "daemon.log"
    daemon = Daemon(config, log, prefix=netns.prefix)
    daemon.start()
    try:
        collector.wait(lambda c: c.readings() >= 4_000, 30, "the first readings")
        offset = log.stat().st_size
        received = collector.readings()
        netns.cut()
        time.sleep(cut_s)
        assert daemon.alive()
        during = since(log, offset)
        assert "retrying with backoff" in during, f"the uplink never noticed the dead link:\n{during}"
        assert "reset" not in during.lower(), "a silent cut must not look like a reset connection"
        assert collector.readings() - received < rate * 2, "readings flowed through a cut link"
        offset = log.stat().st_size
        netns.restore()
        collector.wait(lambda c: c.readings() >= count, 60, f"all {count} readings after the link came back")
        assert "connected to" in since(log, offset)
        assert daemon.terminate() == 0
    finally:
        collector.close()
    verified = verify_all(collector.snapshot(), key.with_name(key.name + ".pub"))
    assert sorted(verified.by_seq) == list(range(1, max(verified.by_seq) + 1))
    assert sorted(set(verified.values["load-1"])) == list(range(count))
    assert not verified.gaps


def test_silent_partition_of_15s_loses_nothing(
    tmp_path: Path, key: Path, netns: VethNamespace, ns_broker: LocalBroker
) -> None:
    partition_run(tmp_path, key, netns, ns_broker, cut_s=15)


@pytest.mark.long
def test_silent_partition_of_a_minute_loses_nothing(
    tmp_path: Path, key: Path, netns: VethNamespace, ns_broker: LocalBroker
) -> None:
    partition_run(tmp_path, key, netns, ns_broker, cut_s=60)
