"""Device drivers (transports that own the wire) and pure decoders (bytes -> readings)."""
