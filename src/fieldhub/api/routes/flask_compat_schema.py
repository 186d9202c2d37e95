"""The Flask/SQLite stack's API shapes and date rules, for `flask_compat`.

Field names are the Flask app's own JSON names (camelCase envelopes, snake_case rows), so they
break this codebase's naming on purpose. docs/compat-flask.md is the reference for each field.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from fieldhub.protocol.timestamps import US_PER_S

# The Flask app's one date format, in requests and in every date it returned.
SEED_FORMAT = "%Y-%m-%d %H:%M:%S"
# Its clients also send leading parts of it ("2025-03", "2025-03-09 11:00", from its own request
# collection): the Flask app compared them as strings, which behaves like the first instant of the
# period they name. Keyed by length, the only thing that tells them apart.
_PARTIAL_FORMATS = {
    4: "%Y",
    7: "%Y-%m",
    10: "%Y-%m-%d",
    13: "%Y-%m-%d %H",
    16: "%Y-%m-%d %H:%M",
    19: SEED_FORMAT,
}
_PARTIAL = re.compile(r"\d{4}(?:-\d{2}(?:-\d{2}(?: \d{2}(?::\d{2}(?::\d{2})?)?)?)?)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
DATE_HELP = (
    "use 'YYYY-MM-DD HH:MM:SS' (or a leading part of it, e.g. '2025-03' or '2025-03-09 11:00') "
    "or ISO 8601 ('2025-03-09T11:00:00Z', '2025-03-09T11:00:00.5+01:00'); no zone means UTC"
)


def parse_flask_time(text: str) -> int:
    """A date as the Flask stack's clients send it, or ISO 8601, in epoch microseconds.

    A partial Flask-format date is the first instant of the period it names; a date without a
    zone is UTC (the Flask container's clock). ValueError with a message for the caller.
    """
    stripped = text.strip()
    try:
        if _PARTIAL.fullmatch(stripped):
            parsed = datetime.strptime(stripped, _PARTIAL_FORMATS[len(stripped)])
        elif len(stripped) >= 10 and stripped[:4].isdigit() and stripped[4] == "-":
            # fromisoformat (3.11) reads "T" or " ", fractions, "Z" and offsets.
            parsed = datetime.fromisoformat(stripped)
        else:
            raise ValueError(stripped)
    except ValueError:
        raise ValueError(f"{text!r} is not a date: {DATE_HELP}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return (parsed - _EPOCH) // _ONE_US
    except OverflowError:
        raise ValueError(f"{text!r} is out of the supported date range") from None


def format_flask_time(ts_us: int) -> str:
    """Epoch microseconds in the Flask stack's format, UTC, to the second (it had no fraction)."""
    return datetime.fromtimestamp(ts_us // US_PER_S, tz=UTC).strftime(SEED_FORMAT)


def json_number(value: float) -> int | float:
    """A stored value as the Flask stack showed it: an integer when it is one (its `rssi` column
    was INTEGER), the float otherwise."""
    return int(value) if value.is_integer() else value


# -- request bodies --------------------------------------------------------------------------------


def _number(value: Any) -> Any:
    """A JSON number or a numeric string (the Flask app ran int()/float() on what it got).

    Booleans are refused: JSON `true` is not a reading, though Python (and pydantic's lax mode)
    would take it for 1 (docs/field-notes.md, "Python libraries").
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        return number
    return value


def _timestamp(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    return value


Number = Annotated[
    float,
    BeforeValidator(_number),
    Field(allow_inf_nan=False),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"}]}),
]
Timestamp = Annotated[
    str | int | float | None,
    BeforeValidator(_timestamp),
    Field(
        description="'YYYY-MM-DD HH:MM:SS' or ISO 8601 (the reading's time), or a number passed "
        "on as the firmware's `timestamp` (uptime in ms: the reading's time is its arrival); "
        "absent: the arrival time",
    ),
]
MacAddress = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="The device's MAC in any spelling (3C:E9:0E:72:12:4C, 3ce90e72124c, ...)",
    ),
]


class GatewayReadingIn(BaseModel):
    """POST /api/gateway-readings: the Flask stack's body."""

    model_config = ConfigDict(extra="forbid")

    macAddress: MacAddress
    timestamp: Timestamp = None
    rssi: Annotated[Number, Field(ge=0, le=100, description="Signal strength in % (0-100)")]


class TemperatureReadingIn(BaseModel):
    """POST /api/sensor-temperature-readings: the Flask stack's body."""

    model_config = ConfigDict(extra="forbid")

    macAddress: MacAddress
    timestamp: Timestamp = None
    temperature: Annotated[Number, Field(ge=-273.15, le=1e6, description="Degrees Celsius")]


# -- responses -------------------------------------------------------------------------------------


class FlaskError(BaseModel):
    """Every error of these endpoints: the Flask app's `{statusCode, error}` plus a `code`."""

    statusCode: int = Field(description="The HTTP status again, as the Flask app sent it")
    error: str = Field(description="What was wrong, for a person")
    code: str = Field(description="Machine-readable reason")


class FlaskDevice(BaseModel):
    """A device in the Flask app's `devices` row shape."""

    id: str = Field(description="fieldhub's device id (the canonical MAC), not an integer")
    internal_id: int | None = Field(description="Always null: fieldhub keeps no internal ids")
    mac_address: str
    chip: str | None = Field(description="Always null: devices do not report their chip")
    info: str = Field(
        description="GATEWAY and/or TEMPERATURE_SENSOR after what the device reported, or ''"
    )
    created_at: str = Field(description="First seen by fieldhub, 'YYYY-MM-DD HH:MM:SS' UTC")


class FlaskDevices(BaseModel):
    """GET /api/devices."""

    statusCode: int
    devices: list[FlaskDevice]
    nextCursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")


class GatewayReadingOut(BaseModel):
    """One gateway message: the Flask app's `gateway_readings` row plus the device's uptime."""

    id: int = Field(description="The reading's time in epoch microseconds: unique per device")
    device_id: str
    timestamp: str = Field(description="The reading's time, 'YYYY-MM-DD HH:MM:SS' UTC")
    rssi: int | float = Field(description="Signal strength in % (fieldhub's rssi_percent)")
    received_time: str = Field(description="When fieldhub received it, 'YYYY-MM-DD HH:MM:SS' UTC")
    uptime_ms: int | float | None = Field(description="The firmware's `timestamp`, when sent")


class GatewayReadings(BaseModel):
    """GET /api/gateway-readings."""

    statusCode: int
    gatewayReadings: list[GatewayReadingOut]
    nextCursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")


class TemperatureReadingOut(BaseModel):
    """One temperature message: the Flask app's `sensor_temperature_readings` row plus uptime."""

    id: int = Field(description="The reading's time in epoch microseconds: unique per device")
    device_id: str
    timestamp: str = Field(description="The reading's time, 'YYYY-MM-DD HH:MM:SS' UTC")
    temperature: int | float
    received_time: str = Field(description="When fieldhub received it, 'YYYY-MM-DD HH:MM:SS' UTC")
    uptime_ms: int | float | None = Field(description="The firmware's `timestamp`, when sent")


class TemperatureReadings(BaseModel):
    """GET /api/sensor-temperature-readings."""

    statusCode: int
    sensorTemperatureReadings: list[TemperatureReadingOut]
    nextCursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")


class ReadingCreated(BaseModel):
    """A reading accepted and committed: the Flask app's `{statusCode, device_id}` plus its id."""

    statusCode: int
    device_id: str
    id: int = Field(description="The reading's time in epoch microseconds (its id in GET)")
