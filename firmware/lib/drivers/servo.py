"""The window servo on one PWM pin: 50 Hz, pulse width from the core's WindowActuator."""

import machine

# Hobby servos expect a pulse every 20 ms (50 Hz).
SERVO_FREQ_HZ = 50


class Servo:
    """Drives a pulse width in microseconds; `fieldhub_node.actuator` chose and bounded it."""

    def __init__(self, pin: int) -> None:
        self._pwm = machine.PWM(machine.Pin(pin), freq=SERVO_FREQ_HZ)

    def pulse_us(self, width_us: int) -> None:
        self._pwm.duty_ns(width_us * 1000)
