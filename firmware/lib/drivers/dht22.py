"""DHT22 (AM2302) temperature/humidity on one GPIO, through MicroPython's built-in `dht`."""

import dht
import machine

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass


class Dht22:
    """Reads `temperature` (C) and `humidity` (%RH); a failed read returns no values."""

    def __init__(self, pin: int) -> None:
        self._sensor = dht.DHT22(machine.Pin(pin))

    def read(self) -> dict[str, Any]:
        try:
            # The DHT22 samples at most every 2 s; faster reads return its last value or fail
            # with a checksum error (OSError), which must not stop the node's loop.
            self._sensor.measure()
        except OSError:
            return {}
        return {"temperature": self._sensor.temperature(), "humidity": self._sensor.humidity()}
