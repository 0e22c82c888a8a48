"""``citygw demo``: the whole gateway on a laptop, through its real drivers, verified live.

- :mod:`citygw.demo.devices`: the simulated devices (SDM630 over Modbus, PMS5003 and GPS on pty
  serial lines); the BLE adverts are a recording the BLE bus replays (``config/demo-adverts.jsonl``);
- :mod:`citygw.demo.link`: the uplink the demo can cut, to show the buffer fill and drain;
- :mod:`citygw.demo.platform`: the city platform (the reference receiver) verifying every batch;
- :mod:`citygw.demo.view`: the live view, progress lines and the summary;
- :mod:`citygw.demo.run`: puts them together around the daemon's own :class:`~citygw.daemon.gateway.Gateway`.

Nothing here is imported by the daemon.
"""

from citygw.demo.run import DEMO_CONFIG, Options, run_demo

__all__ = ["DEMO_CONFIG", "Options", "run_demo"]
