"""The platform's side, for integrators and tests: ``citygw receive`` and ``citygw verify``."""
