"""fieldhub: an open platform for fleets of ESP32 sensor and actuator nodes."""

__version__ = "0.1.0"
