"""Modbus RTU and TCP: energy meters, RS-485 sensors and PLCs through device profiles.

Layers, each in its own module:

- :mod:`~citygw.drivers.modbus.registers`: the data types and byte/word orders, pure encode/decode;
- :mod:`~citygw.drivers.modbus.plan`: the read plan (which requests read a device's registers);
- :mod:`~citygw.drivers.modbus.decoder`: responses in, readings out (pure; counter state explicit);
- :mod:`~citygw.drivers.modbus.client`: the bus link, the only pymodbus client importer: lock, inter-frame
  delay, reconnects;
- :mod:`~citygw.drivers.modbus.bus`: the bus runner the daemon starts, one task per device;
- :mod:`~citygw.drivers.modbus.server`: a simulated Modbus server for tests, benchmarks and demos.

This package's ``__init__`` imports nothing: loading a config must not import pymodbus.
"""
