"""From drivers to the durable buffer: the intake, edge processing and the clock's flags."""
