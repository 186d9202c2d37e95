"""The window actuator's limits: percent position -> servo pulse, validated and clamped."""

from fieldhub_node.jsonutil import is_number

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass


class ActuatorError(ValueError):
    """A requested position the node refuses; the message goes back in the command's ack."""


class WindowActuator:
    """A servo-driven window: 0 % is closed (`min_pulse_us`), 100 % fully open (`max_pulse_us`).

    Requests outside 0..100 or that are not numbers are refused; requests inside 0..100 but
    beyond the installation's travel limits (`min_position`..`max_position`, e.g. a window that
    must never close fully in a greenhouse) are clamped, and the ack says so.
    """

    def __init__(self, window_config: dict[str, Any]) -> None:
        self.min_pulse_us = int(window_config["min_pulse_us"])
        self.max_pulse_us = int(window_config["max_pulse_us"])
        self.min_position = int(window_config["min_position"])
        self.max_position = int(window_config["max_position"])
        self.position = self._clamp(int(window_config["initial_position"]))

    def _clamp(self, position: int) -> int:
        return min(self.max_position, max(self.min_position, position))

    def pulse_us(self, position: int | None = None) -> int:
        """Servo pulse width for a position (default: the current one), linear in percent."""
        pos = self.position if position is None else position
        span = self.max_pulse_us - self.min_pulse_us
        return int(self.min_pulse_us + span * pos / 100 + 0.5)

    def request(self, params: Any) -> dict[str, Any]:
        """Move to `params["position"]`; returns the ack's result or raises ActuatorError."""
        if not isinstance(params, dict) or "position" not in params:
            raise ActuatorError('set_window needs params {"position": 0-100}')
        requested = params["position"]
        if not is_number(requested):
            raise ActuatorError("position must be a number 0-100, got %r" % (requested,))
        if not 0 <= requested <= 100:
            raise ActuatorError("position must be 0-100, got %r" % (requested,))
        # Whole percent is finer than a hobby servo resolves (~1 us of a 1000 us span per step)
        # and keeps the echo in telemetry an exact match for what fieldhub asked.
        self.position = self._clamp(int(requested + 0.5))
        result = {"position": self.position, "pulse_us": self.pulse_us()}
        if self.position != int(requested + 0.5):
            result["clamped"] = True
        return result
