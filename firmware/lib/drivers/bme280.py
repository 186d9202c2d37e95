"""BME280 over I2C: forced-mode reads with the datasheet's compensation (Bosch BST-BME280-DS002).

Forced mode: the sensor takes one measurement per request and sleeps in between, which keeps it
from heating itself (in normal mode a BME280 reads up to 1 C high in still air).
"""

import time

import machine

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass

_CHIP_ID = 0xD0
_BME280_ID = 0x60
_CTRL_HUM = 0xF2
_CTRL_MEAS = 0xF4
_DATA = 0xF7
# Oversampling x1 for each quantity and forced mode: one measurement takes ~10 ms.
_OSRS_X1_FORCED = (1 << 5) | (1 << 2) | 0x01
_MEASURE_MS = 12


def _s16(v: int) -> int:
    return v - 65536 if v > 32767 else v


def _s8(v: int) -> int:
    return v - 256 if v > 127 else v


class Bme280:
    """Reads `temperature` (C), `humidity` (%RH) and `pressure` (hPa)."""

    def __init__(self, sda: int, scl: int, address: int = 0x76) -> None:
        self._i2c = machine.I2C(0, sda=machine.Pin(sda), scl=machine.Pin(scl), freq=100_000)
        self._addr = address
        chip = self._i2c.readfrom_mem(address, _CHIP_ID, 1)[0]
        if chip != _BME280_ID:
            # 0x58 is a BMP280 (no humidity): say so instead of returning nonsense.
            raise OSError("no BME280 at 0x%02x (chip id 0x%02x)" % (address, chip))
        c = self._i2c.readfrom_mem(address, 0x88, 26)
        h = self._i2c.readfrom_mem(address, 0xE1, 7)
        self._t = (c[0] | c[1] << 8, _s16(c[2] | c[3] << 8), _s16(c[4] | c[5] << 8))
        self._p = [c[6] | c[7] << 8] + [_s16(c[i] | c[i + 1] << 8) for i in range(8, 24, 2)]
        self._h = (
            c[25],
            _s16(h[0] | h[1] << 8),
            h[2],
            _s16((h[3] << 4) | (h[4] & 0x0F)),
            _s16((h[5] << 4) | (h[4] >> 4)),
            _s8(h[6]),
        )

    def read(self) -> dict[str, Any]:
        try:
            self._i2c.writeto_mem(self._addr, _CTRL_HUM, b"\x01")
            self._i2c.writeto_mem(self._addr, _CTRL_MEAS, bytes([_OSRS_X1_FORCED]))
            time.sleep_ms(_MEASURE_MS)
            d = self._i2c.readfrom_mem(self._addr, _DATA, 8)
        except OSError:
            return {}  # a loose wire must not stop the node's loop
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        t1, t2, t3 = self._t
        v1 = (adc_t / 16384.0 - t1 / 1024.0) * t2
        v2 = ((adc_t / 131072.0 - t1 / 8192.0) ** 2) * t3
        t_fine = v1 + v2
        temperature = t_fine / 5120.0
        p = self._p
        v1 = t_fine / 2.0 - 64000.0
        v2 = v1 * v1 * p[5] / 32768.0 + v1 * p[4] * 2.0
        v2 = v2 / 4.0 + p[3] * 65536.0
        v1 = (p[2] * v1 * v1 / 524288.0 + p[1] * v1) / 524288.0
        v1 = (1.0 + v1 / 32768.0) * p[0]
        pressure = 0.0
        if v1:
            pr = 1048576.0 - adc_p
            pr = (pr - v2 / 4096.0) * 6250.0 / v1
            v1 = p[8] * pr * pr / 2147483648.0
            v2 = pr * p[7] / 32768.0
            pressure = (pr + (v1 + v2 + p[6]) / 16.0) / 100.0
        h1, h2, h3, h4, h5, h6 = self._h
        hum = t_fine - 76800.0
        hum = (adc_h - (h4 * 64.0 + h5 / 16384.0 * hum)) * (
            h2 / 65536.0 * (1.0 + h6 / 67108864.0 * hum * (1.0 + h3 / 67108864.0 * hum))
        )
        hum = hum * (1.0 - h1 * hum / 524288.0)
        humidity = min(100.0, max(0.0, hum))
        return {
            "temperature": round(temperature, 2),
            "humidity": round(humidity, 1),
            "pressure": round(pressure, 1),
        }
