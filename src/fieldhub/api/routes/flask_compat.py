"""The Flask/SQLite gateway stack's REST API, served from fieldhub's own store.

Its clients (the stack's web pages, scripts, its request collection) keep working: the same
paths, query parameters and JSON field names. What changes is what the Flask app got wrong
(docs/field-notes.md): errors are real 4xx with a JSON body, never HTTP 200 with text/html or a
500 on a bad body; dates compare as times, so ISO 8601 works; readings come in pages.
docs/compat-flask.md has every field, status code and difference.

Readings are the ones the `readings` profile stores from MQTT: a gateway message is one row of
`rssi_percent` (+ `uptime_ms`), a temperature message one row of `temperature` (+ `uptime_ms`).
A POST goes through ingest like an MQTT message on the device's topic, so it is decoded by the
same decoder, lands in the same batch writer and is indistinguishable once stored.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fieldhub.api.auth import OPERATOR, VIEWER
from fieldhub.api.cursors import decode_cursor, encode_cursor
from fieldhub.api.deps import DecoderDep, IngestDep, NowDep, StoreDep
from fieldhub.api.errors import domain_headers, domain_status
from fieldhub.api.routes.flask_compat_schema import (
    FlaskDevice,
    FlaskDevices,
    FlaskError,
    GatewayReadingIn,
    GatewayReadingOut,
    GatewayReadings,
    ReadingCreated,
    TemperatureReadingIn,
    TemperatureReadingOut,
    TemperatureReadings,
    format_flask_time,
    json_number,
    parse_flask_time,
)
from fieldhub.api.routing import AllMethodsRoute
from fieldhub.errors import FieldhubError
from fieldhub.ingest.pipeline import Ingest
from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id
from fieldhub.protocol.messages import Decoded, Rejected, RejectReason
from fieldhub.protocol.payload import MAX_PAYLOAD_BYTES
from fieldhub.protocol.profiles import READINGS
from fieldhub.store.base import Store
from fieldhub.store.types import StoreError, TimeRow

# One page of readings when the client names no `limit`. The Flask app sent everything (9.6 MB
# for 79k rows); its clients know no paging, so the default must still cover what they
# ask for in practice: a gateway publishes every 30 s, 2,880 rows a day, so a day's range comes
# whole. Larger pages cost the server memory and the client a long parse for little gain.
DEFAULT_READINGS_PAGE = 5_000
MAX_READINGS_PAGE = 10_000
# A fleet of the Flask stack is a handful of devices; a page of 1,000 is every one of them.
MAX_DEVICES_PAGE = 1_000

# fieldhub's metric names for the firmware's fields (the profile renames `rssi` and `timestamp`).
RSSI_METRIC = READINGS.renames.get("rssi", "rssi")
TEMPERATURE_METRIC = READINGS.renames.get("temperature", "temperature")
UPTIME_METRIC = READINGS.renames.get("timestamp", "timestamp")
# What `info` says of a device, after the metrics it reported: the Flask pages pick gateways and
# sensors by these words in `info` ("GATEWAY" in info.upper()).
INFO_WORDS = ((RSSI_METRIC, "GATEWAY"), (TEMPERATURE_METRIC, "TEMPERATURE_SENSOR"))

JSON_MEDIA_TYPE = "application/json"


class CompatError(Exception):
    """An error these endpoints answer in the Flask app's shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def flask_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """`{"statusCode", "error", "code"}` with the same status on the HTTP response."""
    body = FlaskError(statusCode=status, error=message, code=code)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's validation error, said the Flask app's way.

    400 when the request cannot be read (a query parameter missing or malformed, a body that is
    not JSON or not an object), 422 when a JSON object breaks the body's schema.
    """
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ())]
    kind = str(first.get("type", ""))
    message = str(first.get("msg", "invalid request"))
    if kind == "json_invalid":
        return flask_error(400, "malformed_json", f"body is not valid JSON: {message}")
    if loc[:1] == ["body"] and len(loc) == 1:
        if kind == "missing":
            return flask_error(400, "missing_body", "a JSON object is required in the body")
        return flask_error(400, "not_an_object", f"body must be a JSON object: {message}")
    if loc[:1] == ["query"]:
        name = loc[1] if len(loc) > 1 else "?"
        if kind == "missing":
            return flask_error(400, "missing_parameter", f"required {name!r} in params")
        return flask_error(400, "invalid_parameter", f"{name}: {message}")
    where = ".".join(loc[1:] or loc)
    return flask_error(422, "invalid_body", f"{where}: {message}")


def _refuse_body_headers(request: Request) -> JSONResponse | None:
    """415/411/413 before the body is read: JSON only, with a length, within the size limit."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != JSON_MEDIA_TYPE and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        shown = media or "none"
        return flask_error(
            415, "unsupported_media_type", f"Expected Content-Type: {JSON_MEDIA_TYPE}, got {shown}"
        )
    declared = request.headers.get("content-length")
    if declared is None:
        # Without a length the body would have to be read to learn it is too large.
        return flask_error(411, "length_required", "a Content-Length header is required")
    if not declared.isdigit():
        return flask_error(
            400, "bad_content_length", f"Content-Length {declared!r} is not a number"
        )
    if int(declared) > MAX_PAYLOAD_BYTES:
        return flask_error(
            413, "payload_too_large", f"body is {declared} bytes, the limit is {MAX_PAYLOAD_BYTES}"
        )
    return None


class FlaskCompatRoute(AllMethodsRoute):
    """A route whose every error, FastAPI's own included, leaves in the Flask app's shape.

    The app-wide handlers answer `{"error": {"code", "message"}}`; the Flask app's clients read
    `error` as a string, so these routes translate before those handlers see anything.
    """

    def method_not_allowed(self, allowed: str) -> JSONResponse:
        return flask_error(405, "method_not_allowed", f"use {allowed}")

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def guarded(request: Request) -> Response:
            if takes_body:
                refusal = _refuse_body_headers(request)
                if refusal is not None:
                    return refusal
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _validation_error(exc)
            except CompatError as exc:
                return flask_error(exc.status, exc.code, exc.message)
            except FieldhubError as exc:
                # 401/403 from authentication (api/auth.py), in this API's shape too.
                return flask_error(domain_status(exc), exc.code, exc.message, domain_headers(exc))
            except StarletteHTTPException as exc:
                # e.g. a body that is not UTF-8: FastAPI's 400 "error parsing the body".
                return flask_error(exc.status_code, f"http_{exc.status_code}", str(exc.detail))
            except StoreError as exc:
                return flask_error(
                    503, "store_unavailable", f"the database is not answering: {exc}"
                )

        return guarded


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Missing or malformed parameter, or a body that is not a JSON object",
        401: "No credentials, or ones that do not check",
        403: "Below the role this needs (viewer reads, operator posts readings)",
        404: "No such device (GET) or the readings profile is not enabled (POST)",
        411: "No Content-Length",
        413: "Body too large",
        415: "Content-Type is not application/json",
        422: "The JSON body breaks the schema, or fieldhub's decoder rejected it",
        503: "The database is not answering",
    }
    return {s: {"model": FlaskError, "description": descriptions[s]} for s in (*statuses, 401, 403)}


# Reading is for viewers; posting readings is writing as any device, for operators (as the
# native HTTP ingest): each POST adds OPERATOR.
router = APIRouter(
    prefix="/api", tags=["flask-compat"], route_class=FlaskCompatRoute, dependencies=[VIEWER]
)

MacParam = Annotated[
    str,
    Query(
        min_length=1,
        max_length=64,
        description="The device's MAC in any spelling, e.g. 3C:E9:0E:72:12:4C or 3ce90e72124c",
    ),
]
DateParam = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        description="Inclusive bound. 'YYYY-MM-DD HH:MM:SS' or a leading part of it ('2025-03', "
        "'2025-03-09 11:00': the period's first instant), or ISO 8601; no zone means UTC",
    ),
]
LimitParam = Annotated[
    int, Query(ge=1, le=MAX_READINGS_PAGE, description="Readings per page, newest first")
]
CursorParam = Annotated[
    str | None,
    Query(min_length=1, max_length=500, description="`nextCursor` of the previous page, as is"),
]


def _device_id(raw: str) -> str:
    try:
        return canonical_device_id(raw.strip())
    except InvalidDeviceId as exc:
        raise CompatError(400, "invalid_parameter", f"macAddress: {exc}") from None


def _time(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_flask_time(value)
    except ValueError as exc:
        raise CompatError(400, "invalid_parameter", f"{name}: {exc}") from None


def _cursor(cursor: str | None, kind: type) -> Any:
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor, kind)[0]
    except FieldhubError as exc:
        raise CompatError(400, "invalid_cursor", exc.message) from None


async def _time_rows(
    store: Store,
    *,
    now_us: int,
    mac: str,
    readings_from: str | None,
    readings_to: str | None,
    limit: int,
    cursor: str | None,
    metric: str,
    what: str,
) -> tuple[str, list[TimeRow], str | None]:
    """The device id, one page of its rows of `metric` newest first, and the next cursor."""
    device_id = _device_id(mac)
    start_us = _time("readingsFrom", readings_from)
    to_us = _time("readingsTo", readings_to)
    if start_us is not None and to_us is not None and start_us > to_us:
        raise CompatError(
            400,
            "invalid_range",
            f"readingsFrom ({readings_from}) is after readingsTo ({readings_to})",
        )
    before_us = _cursor(cursor, int)
    if await store.get_device(device_id, now_us=now_us) is None:
        # The Flask app's own message, so a client matching on it keeps working.
        raise CompatError(404, "not_found", f"{what} with MAC_address={mac} not found")
    rows = await store.query_time_rows(
        device_id,
        metric,
        with_metrics=[UPTIME_METRIC],
        start_us=start_us,
        # readingsTo is inclusive, as the Flask app's `<=`; the store's end is exclusive.
        end_us=None if to_us is None else to_us + 1,
        limit=limit + 1,
        before_us=before_us,
    )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].ts_us) if len(rows) > limit else None
    return device_id, page, next_cursor


def _uptime(row: TimeRow) -> int | float | None:
    value = row.values.get(UPTIME_METRIC)
    return None if value is None else json_number(value)


@router.get("/devices", response_model=FlaskDevices, responses=_responses(400, 422, 503))
async def get_devices(
    store: StoreDep,
    now: NowDep,
    internal_id: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Not supported: fieldhub keeps no internal ids (answers 422)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_DEVICES_PAGE)] = MAX_DEVICES_PAGE,
    cursor: CursorParam = None,
) -> FlaskDevices:
    """The devices of the readings profile (the Flask stack's devices), by MAC."""
    if internal_id is not None:
        raise CompatError(
            422,
            "unsupported_parameter",
            "internal_id: fieldhub keeps no internal ids (devices register themselves); "
            "list all devices and pick them by mac_address",
        )
    after = _cursor(cursor, str)
    rows = await store.list_devices(
        profile=READINGS.name, presence=None, search=None, limit=limit + 1, after=after, now_us=now
    )
    page = rows[:limit]
    latest = await store.latest_values([row.device_id for row in page])
    devices = []
    for row in page:
        names = {m.name for m in latest.get(row.device_id, [])}
        devices.append(
            FlaskDevice(
                id=row.device_id,
                internal_id=None,
                mac_address=row.device_id,
                chip=None,
                info=" ".join(word for metric, word in INFO_WORDS if metric in names),
                created_at=format_flask_time(row.first_seen_us),
            )
        )
    next_cursor = encode_cursor(page[-1].device_id) if len(rows) > limit else None
    return FlaskDevices(statusCode=200, devices=devices, nextCursor=next_cursor)


@router.get(
    "/gateway-readings", response_model=GatewayReadings, responses=_responses(400, 404, 503)
)
async def get_gateway_readings(
    store: StoreDep,
    now: NowDep,
    macAddress: MacParam,
    readingsFrom: DateParam = None,
    readingsTo: DateParam = None,
    limit: LimitParam = DEFAULT_READINGS_PAGE,
    cursor: CursorParam = None,
) -> GatewayReadings:
    """A gateway's messages newest first, optionally in [readingsFrom, readingsTo]; paginated."""
    device_id, rows, next_cursor = await _time_rows(
        store,
        now_us=now,
        mac=macAddress,
        readings_from=readingsFrom,
        readings_to=readingsTo,
        limit=limit,
        cursor=cursor,
        metric=RSSI_METRIC,
        what="Gateway",
    )
    return GatewayReadings(
        statusCode=200,
        gatewayReadings=[
            GatewayReadingOut(
                id=row.ts_us,
                device_id=device_id,
                timestamp=format_flask_time(row.ts_us),
                rssi=json_number(row.values[RSSI_METRIC]),
                received_time=format_flask_time(row.received_us),
                uptime_ms=_uptime(row),
            )
            for row in rows
        ],
        nextCursor=next_cursor,
    )


@router.get(
    "/sensor-temperature-readings",
    response_model=TemperatureReadings,
    responses=_responses(400, 404, 503),
)
async def get_sensor_temperature_readings(
    store: StoreDep,
    now: NowDep,
    macAddress: MacParam,
    readingsFrom: DateParam = None,
    readingsTo: DateParam = None,
    limit: LimitParam = DEFAULT_READINGS_PAGE,
    cursor: CursorParam = None,
) -> TemperatureReadings:
    """A sensor's temperature messages newest first, optionally in a date range; paginated."""
    device_id, rows, next_cursor = await _time_rows(
        store,
        now_us=now,
        mac=macAddress,
        readings_from=readingsFrom,
        readings_to=readingsTo,
        limit=limit,
        cursor=cursor,
        metric=TEMPERATURE_METRIC,
        what="Sensor",
    )
    return TemperatureReadings(
        statusCode=200,
        sensorTemperatureReadings=[
            TemperatureReadingOut(
                id=row.ts_us,
                device_id=device_id,
                timestamp=format_flask_time(row.ts_us),
                temperature=json_number(row.values[TEMPERATURE_METRIC]),
                received_time=format_flask_time(row.received_us),
                uptime_ms=_uptime(row),
            )
            for row in rows
        ],
        nextCursor=next_cursor,
    )


async def _ingest(
    ingest: Ingest,
    decoder: MessageDecoder,
    *,
    channel: str,
    mac: str,
    timestamp: str | float | None,
    fields: Sequence[tuple[str, float]],
    metric: str,
) -> ReadingCreated:
    """Submit the firmware's payload for this reading on its topic, as MQTT would deliver it."""
    if not any(p.name == READINGS.name for p in decoder.table.profiles):
        raise CompatError(
            404, "profile_disabled", "the readings profile is not enabled in this fieldhub"
        )
    try:
        device_id = canonical_device_id(mac.strip())
    except InvalidDeviceId as exc:
        raise CompatError(422, "invalid_body", f"macAddress: {exc}") from None
    payload: dict[str, object] = {"macAddress": mac}
    if isinstance(timestamp, str):
        try:
            # As epoch microseconds: the decoder reads that magnitude as a date, exactly.
            payload["timestamp"] = parse_flask_time(timestamp)
        except ValueError as exc:
            raise CompatError(422, "invalid_body", f"timestamp: {exc}") from None
    elif timestamp is not None:
        # A number is the firmware's own `timestamp` (uptime ms): passed on for the decoder.
        payload["timestamp"] = timestamp
    for name, value in fields:
        payload[name] = json_number(value)
    # The topic's MAC segment is canonical, as the firmware prints it.
    topic = f"/readings/{channel}/{device_id}"
    outcome = await ingest.submit(topic, orjson.dumps(payload))
    result = outcome.result
    if isinstance(result, Rejected):
        detail = result.detail
        if isinstance(timestamp, str) and result.reason is RejectReason.ABSURD_TIMESTAMP:
            # The decoder names the epoch microseconds it was given; name the caller's date too.
            detail = f"timestamp {timestamp!r} (passed on as epoch microseconds): {detail}"
        raise CompatError(422, result.reason.value, f"{detail} (kept in dead letters)")
    if not isinstance(result, Decoded):
        raise CompatError(422, "not_data", f"topic {topic!r} carries no readings")
    stored = next(r for r in result.readings if r.metric == metric)
    return ReadingCreated(statusCode=201, device_id=result.device_id, id=stored.ts_us)


@router.post(
    "/gateway-readings",
    dependencies=[OPERATOR],
    status_code=201,
    response_model=ReadingCreated,
    responses=_responses(400, 404, 411, 413, 415, 422, 503),
)
async def post_gateway_reading(
    body: GatewayReadingIn, ingest: IngestDep, decoder: DecoderDep
) -> ReadingCreated:
    """Store one gateway reading through ingest, as if published on /readings/gateway/{MAC}."""
    return await _ingest(
        ingest,
        decoder,
        channel="gateway",
        mac=body.macAddress,
        timestamp=body.timestamp,
        fields=[("rssi", body.rssi)],
        metric=RSSI_METRIC,
    )


@router.post(
    "/sensor-temperature-readings",
    dependencies=[OPERATOR],
    status_code=201,
    response_model=ReadingCreated,
    responses=_responses(400, 404, 411, 413, 415, 422, 503),
)
async def post_sensor_temperature_reading(
    body: TemperatureReadingIn, ingest: IngestDep, decoder: DecoderDep
) -> ReadingCreated:
    """Store one temperature reading through ingest, as if published on
    /readings/temperature/{MAC}."""
    return await _ingest(
        ingest,
        decoder,
        channel="temperature",
        mac=body.macAddress,
        timestamp=body.timestamp,
        fields=[("temperature", body.temperature)],
        metric=TEMPERATURE_METRIC,
    )


_GONE = (
    "the Flask app's publish-test endpoints wrote random readings into the database; fieldhub "
    "does not. Run `fieldhub sim --profile readings` for simulated readings-profile devices"
)


@router.post(
    "/publish-gateway-test",
    dependencies=[OPERATOR],
    status_code=410,
    response_model=FlaskError,
    responses={410: {"model": FlaskError, "description": "Not provided by fieldhub"}},
)
async def publish_gateway_test() -> FlaskError:
    """Gone: the Flask app published a random test reading here."""
    return FlaskError(statusCode=410, error=_GONE, code="gone")


@router.post(
    "/publish-temperature-test",
    dependencies=[OPERATOR],
    status_code=410,
    response_model=FlaskError,
    responses={410: {"model": FlaskError, "description": "Not provided by fieldhub"}},
)
async def publish_temperature_test() -> FlaskError:
    """Gone: the Flask app published a random test reading here."""
    return FlaskError(statusCode=410, error=_GONE, code="gone")
