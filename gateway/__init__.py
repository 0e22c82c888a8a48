"""citygw: an edge sensor gateway for smart cities.

Sensors in, signed batches out, nothing lost in between. The ``gateway`` package owns
everything after a :class:`~citygw.reading.Reading` exists: config, the durable buffer,
batching, signing, uplinks and the daemon's lifecycle. Device I/O lives in ``drivers``.
"""

__version__ = "0.1.0"
