"""The daemon keeps its start-up heap out of the cycle collector's way while it runs
(:func:`citygw.daemon.gateway.settle_heap`) and gives it back when it stops."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

from citygw.config import load_config
from citygw.daemon.gateway import Gateway
from citygw.demo.broker import free_port

from .support import write_config


async def test_the_start_up_heap_is_frozen_while_running_and_released_at_stop(
    tmp_path: Path, key: Path
) -> None:
    path = write_config(tmp_path / "c.yaml", key=key, port=free_port(), devices={"t1": {"bus": "gen"}})
    assert gc.get_freeze_count() == 0
    gateway = Gateway(load_config(path))
    task = asyncio.create_task(gateway.run())
    try:
        deadline = time.monotonic() + 20
        while not gc.get_freeze_count() and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert gc.get_freeze_count() > 0, "frozen once the gateway is ready"
    finally:
        gateway.stop()
        await task
    assert gc.get_freeze_count() == 0, "a stopped gateway leaves nothing frozen in its process"
