"""BLE sensors and presence counting: pure decoders, a pure router, and the bleak transport.

- :mod:`drivers.ble.bthome`, :mod:`drivers.ble.ruuvi`, :mod:`drivers.ble.pvvx`: one advert's bytes
  in, :class:`~drivers.ble.common.Measurement` values out, or one :class:`~drivers.ble.common.DecodeError`;
- :mod:`citygw.drivers.ble.presence`: distinct advertisers per window from daily-salted hashes (footfall);
- :mod:`citygw.drivers.ble.router`: the allowlist, de-duplication, adverts -> readings;
- :mod:`drivers.ble.scanner`: the only importer of bleak; :mod:`drivers.ble.bus`: the bus runner;
- :mod:`drivers.ble.recording`, :mod:`drivers.ble.replay`: recorded adverts, and the bleak backend that
  replays them at the radio's seam for a bus with ``replay:`` (benches, the demo).
"""
