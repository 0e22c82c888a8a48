"""A fleet of 50 gateways (in-process uplinks) whose broker restarts: reconnects are spread.

The short form narrows the backoff (``backoff_max: 8s``) to fit CI and checks the fleet comes
back spread over that window rather than in one burst; bench/fleet.py measures the defaults
(target: no second sees more than 10 % of the fleet), and ``-m long`` runs that here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from citygw.demo.broker import LocalBroker

from .fleet import fleet_restart, prepare_broker


@pytest.fixture
def logging_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    (tmp_path / "broker").mkdir()
    broker = LocalBroker(workdir=tmp_path / "broker")
    prepare_broker(broker)
    broker.start()
    yield broker
    broker.close()


async def test_fleet_of_50_reconnects_spread_over_the_backoff_window(
    tmp_path: Path, key: Path, logging_broker: LocalBroker
) -> None:
    report = await fleet_restart(
        logging_broker,
        tmp_path,
        key,
        size=50,
        down_s=2.0,
        timeout=30,
        backoff={"backoff_initial": "1s", "backoff_max": "8s"},
    )
    assert report.reconnected == 50
    assert report.last_s - report.first_s >= 4, f"reconnects bunched up: {report}"
    assert report.peak_share <= 0.4, f"a stampede: {report}"


@pytest.mark.long
async def test_fleet_of_50_with_default_backoff_stays_under_10_percent_per_second(
    tmp_path: Path, key: Path, logging_broker: LocalBroker
) -> None:
    report = await fleet_restart(logging_broker, tmp_path, key, size=50, down_s=10.0, timeout=300)
    assert report.reconnected == 50
    assert report.peak_share <= 0.10, report
