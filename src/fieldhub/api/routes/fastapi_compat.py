"""The FastAPI/RabbitMQ stack's REST API (its `backend/api/routes.py`), served from fieldhub.

Its scripts keep working: the same paths, query parameters, JSON field names and status codes
(`fastapi_compat_schema.py`), and FastAPI's own error shape, `{"detail": ...}`. A node is a
device of that stack: one whose messages arrive on `devices/{MAC}/data`, which the native
profile marks with the `fastapi` command format. A `sensor_data` row is one such message: the
readings it stored, grouped by their time. An action becomes a command tracked by fieldhub's
command service. docs/compat-fastapi.md has every difference from the original.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fieldhub.api.audited import submit_audited
from fieldhub.api.auth import VIEWER, OperatorDep
from fieldhub.api.deps import CommandsDep, NowDep, StoreDep
from fieldhub.api.errors import domain_headers, domain_status
from fieldhub.api.routes.fastapi_compat_schema import (
    ActionResponse,
    DashboardStats,
    DetailError,
    NodeAction,
    NodeCount,
    NodeResponse,
    SensorDataResponse,
    ValidationDetailError,
)
from fieldhub.api.routing import AllMethodsRoute
from fieldhub.commands.service import CommandService, NewCommand
from fieldhub.errors import FieldhubError
from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id, is_mac
from fieldhub.protocol.profiles import NATIVE
from fieldhub.store.base import Store
from fieldhub.store.types import DeviceRow, MetricSummary, PresenceState, StoreError

# The route the stack's firmware publishes on, and the command format it marks its devices with.
DATA_PATTERN = "devices/+/data"
DATA_ROUTE = next(r for r in NATIVE.routes if r.pattern == DATA_PATTERN)
NODE_FORMAT = DATA_ROUTE.command_format
# fieldhub's metric names back to the firmware's field names (`rssi` was `wifi_rssi`...): the
# profile's renames, and the route's own where it has them (they win).
_RENAMES: dict[str, str] = {**NATIVE.renames, **getattr(DATA_ROUTE, "renames", {})}
FIRMWARE_NAMES = {metric: name for name, metric in _RENAMES.items()}
# The firmware's boolean fields (stored as 0/1 readings), answered as true/false again.
FIRMWARE_BOOLEANS = frozenset(
    {"light_state", "fan_state", "relay3_state", "relay4_state", "real_model_state", "smart_mode"}
)
# The stack listed every node at once; its fleets are a handful of ESP32s. fieldhub answers at
# most this many (ordered by id), scanning the native profile's devices a page at a time.
MAX_NODES = 1_000
DEVICE_PAGE = 1_000
# The stack's own bounds on `limit`.
MAX_SENSOR_ROWS = 1_000
DEFAULT_SENSOR_ROWS = 100
MAX_LATEST_ROWS = 100
DEFAULT_LATEST_ROWS = 10
DAY_US = 86_400 * 1_000_000
NOT_FOUND = "Node not found"


def _detail(status: int, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class FastapiCompatRoute(AllMethodsRoute):
    """A route whose every error leaves in FastAPI's shape, `{"detail": ...}`, as the stack's did
    (the app-wide handlers answer fieldhub's `{"error": {...}}`)."""

    def method_not_allowed(self, allowed: str) -> JSONResponse:
        return _detail(405, "Method Not Allowed")

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _detail(422, jsonable_encoder(exc.errors()))
            except FieldhubError as exc:
                return _detail(domain_status(exc), exc.message, domain_headers(exc))
            except StarletteHTTPException as exc:
                return _detail(exc.status_code, str(exc.detail), exc.headers)
            except StoreError as exc:
                return _detail(503, f"Database connection unavailable: {exc}")

        return guarded


class NodeNotFound(StarletteHTTPException):
    """404 `{"detail": "Node not found"}`, the stack's words."""

    def __init__(self) -> None:
        super().__init__(404, NOT_FOUND)


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "The body cannot be read (not UTF-8)",
        401: "No credentials, or ones that do not check",
        403: "Below the role this needs (viewer reads, operator sends actions)",
        404: "No such node",
        409: "The command's id is taken",
        413: "The encoded command is over the firmware's limit",
        422: "The request or the action breaks the schema (the action's params included)",
        429: "Too many commands for the node (rate or queue limit)",
        503: "The database is not answering",
    }
    return {
        s: {
            "model": ValidationDetailError if s == 422 else DetailError,
            "description": descriptions[s],
        }
        for s in statuses
    }


router = APIRouter(
    prefix="/api",
    tags=["fastapi-compat"],
    route_class=FastapiCompatRoute,
    responses=_responses(503, 401, 403),
    # Reading is for viewers; the one POST (actions) takes an OperatorDep and is audited.
    dependencies=[VIEWER],
)

NodeIdParam = Annotated[
    str,
    Path(min_length=1, max_length=64, description="The node's MAC in any spelling"),
]


# -- nodes --------------------------------------------------------------------------------------


def is_node(device: DeviceRow) -> bool:
    """A device of the FastAPI stack (its messages came on `devices/{MAC}/data`)."""
    return device.profile == NATIVE.name and device.command_format == NODE_FORMAT


async def list_nodes(
    store: Store, now_us: int, presence: PresenceState | None = None
) -> list[DeviceRow]:
    """The stack's nodes ordered by id, at most MAX_NODES."""
    nodes: list[DeviceRow] = []
    after: str | None = None
    while len(nodes) < MAX_NODES:
        page = await store.list_devices(
            profile=NATIVE.name,
            presence=presence,
            search=None,
            limit=DEVICE_PAGE,
            after=after,
            now_us=now_us,
        )
        nodes.extend(row for row in page if is_node(row))
        if len(page) < DEVICE_PAGE:
            break
        after = page[-1].device_id
    return nodes[:MAX_NODES]


async def node_or_none(store: Store, node_id: str, now_us: int) -> DeviceRow | None:
    """The node by any spelling of its id; None when there is no such node of this stack."""
    try:
        device_id = canonical_device_id(node_id.strip())
    except InvalidDeviceId:
        return None
    device = await store.get_device(device_id, now_us=now_us)
    return device if device is not None and is_node(device) else None


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _datetime(ts_us: int) -> datetime:
    """Exact to the microsecond (a float of epoch seconds is not)."""
    return EPOCH + timedelta(microseconds=ts_us)


def _node_id(device: DeviceRow) -> str:
    return device.topic_id or device.device_id


def node_response(device: DeviceRow) -> NodeResponse:
    """A device as the stack's `nodes` row."""
    node_id = _node_id(device)
    if is_mac(device.device_id):
        row_id = int(device.device_id.replace(":", ""), 16)
    else:  # beyond 2**48: never a MAC's number
        row_id = device.first_seen_us
    return NodeResponse(
        id=row_id,
        node_id=node_id,
        # The worker's name for a node it registered.
        name=f"ESP32-{node_id[-6:]}",
        mac_address=node_id,
        created_at=_datetime(device.first_seen_us),
        last_seen=_datetime(device.last_seen_us),
        is_active="true",
        status="online" if device.presence == "online" else "offline",
    )


@router.get("/nodes", response_model=list[NodeResponse])
async def get_nodes(store: StoreDep, now: NowDep) -> list[NodeResponse]:
    """Every node of the stack (at most 1000), by id."""
    return [node_response(d) for d in await list_nodes(store, now)]


@router.get("/nodes/online", response_model=list[NodeResponse])
async def get_online_nodes(store: StoreDep, now: NowDep) -> list[NodeResponse]:
    """The nodes fieldhub sees online now."""
    return [node_response(d) for d in await list_nodes(store, now, presence="online")]


@router.get("/nodes/count", response_model=NodeCount)
async def get_nodes_count(store: StoreDep, now: NowDep) -> NodeCount:
    """How many nodes `GET /api/nodes` lists."""
    return NodeCount(count=len(await list_nodes(store, now)))


@router.get("/nodes/{node_id}", response_model=NodeResponse, responses=_responses(404))
async def get_node(store: StoreDep, now: NowDep, node_id: NodeIdParam) -> NodeResponse:
    """One node; 404 `{"detail": "Node not found"}`."""
    device = await node_or_none(store, node_id, now)
    if device is None:
        raise NodeNotFound()
    return node_response(device)


# -- sensor data ----------------------------------------------------------------------------------


def _firmware_value(name: str, value: float) -> Any:
    if name in FIRMWARE_BOOLEANS and value in (0.0, 1.0):
        return value == 1.0
    return int(value) if value.is_integer() else value


async def node_messages(
    store: Store, device: DeviceRow, metrics: Sequence[MetricSummary], limit: int
) -> list[SensorDataResponse]:
    """The node's newest `limit` messages, newest first: its readings grouped by time.

    The newest `limit` readings of each metric are enough: a message among the newest `limit`
    has fewer than `limit` newer messages, so each of its readings is among its metric's newest.
    """
    per_metric = await asyncio.gather(
        *(
            store.query_readings(
                device.device_id,
                metrics=[m.name],
                start_us=None,
                end_us=None,
                limit=limit,
                after=None,
                descending=True,
            )
            for m in metrics
        )
    )
    messages: dict[int, tuple[int, dict[str, Any]]] = {}
    for rows in per_metric:
        for row in rows:
            name = FIRMWARE_NAMES.get(row.metric, row.metric)
            _, data = messages.setdefault(row.ts_us, (row.received_us, {}))
            data[name] = _firmware_value(name, row.value)
    node_id = _node_id(device)
    return [
        SensorDataResponse(
            id=ts_us,
            node_id=node_id,
            data=messages[ts_us][1],
            received_at=_datetime(messages[ts_us][0]),
        )
        for ts_us in heapq.nlargest(limit, messages)
    ]


async def fleet_messages(store: Store, now_us: int, limit: int) -> list[SensorDataResponse]:
    """The newest `limit` messages of all nodes, newest first.

    Nodes are read from the most recently heard; one whose newest reading is older than the
    `limit`-th message found so far cannot add any, nor can the nodes after it.
    """
    nodes = await list_nodes(store, now_us)
    latest = await store.latest_values([d.device_id for d in nodes])

    def newest(device: DeviceRow) -> int:
        return max((m.last_ts_us for m in latest.get(device.device_id, [])), default=0)

    found: list[SensorDataResponse] = []
    for device in sorted(nodes, key=newest, reverse=True):
        metrics = latest.get(device.device_id, [])
        if not metrics:
            continue
        if len(found) >= limit and newest(device) < found[limit - 1].id:
            break
        found.extend(await node_messages(store, device, metrics, limit))
        found.sort(key=lambda r: r.id, reverse=True)
        del found[limit:]
    return found


SensorLimit = Annotated[
    int, Query(ge=1, le=MAX_SENSOR_ROWS, description="Number of records to return")
]


@router.get("/sensor-data", response_model=list[SensorDataResponse])
async def get_sensor_data(
    store: StoreDep,
    now: NowDep,
    node_id: Annotated[str | None, Query(max_length=64, description="Filter by node ID")] = None,
    limit: SensorLimit = DEFAULT_SENSOR_ROWS,
) -> list[SensorDataResponse]:
    """The newest messages, of one node or of all; `[]` for an unknown node, as the stack."""
    if node_id is None:
        return await fleet_messages(store, now, limit)
    return await _one_node(store, now, node_id, limit)


async def _one_node(store: Store, now: int, node_id: str, limit: int) -> list[SensorDataResponse]:
    device = await node_or_none(store, node_id, now)
    if device is None:
        return []
    return await node_messages(store, device, await store.device_metrics(device.device_id), limit)


@router.get("/nodes/{node_id}/sensor-data", response_model=list[SensorDataResponse])
async def get_node_sensor_data(
    store: StoreDep, now: NowDep, node_id: NodeIdParam, limit: SensorLimit = DEFAULT_SENSOR_ROWS
) -> list[SensorDataResponse]:
    """A node's newest messages; `[]` for an unknown node, as the stack."""
    return await _one_node(store, now, node_id, limit)


@router.get("/sensor-data/latest", response_model=list[SensorDataResponse])
async def get_latest_sensor_data(
    store: StoreDep,
    now: NowDep,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LATEST_ROWS, description="Number of latest records to return")
    ] = DEFAULT_LATEST_ROWS,
) -> list[SensorDataResponse]:
    """The newest messages across all nodes."""
    return await fleet_messages(store, now, limit)


# -- actions --------------------------------------------------------------------------------------


def action_params(commands: CommandService, device: DeviceRow, body: NodeAction) -> dict[str, Any]:
    """The command's params from the action's fields, as the stack's backend put them in its
    command: `url` and `angle` under their names. `value` too, except where the firmware reads
    another name: a JSON object's keys become params (`{"relay": 3, "state": true}`), and a
    scalar goes to the action's one other param (`LIGHT_CONTROL`'s `state`)."""
    params: dict[str, Any] = {}
    if body.url is not None:
        params["url"] = body.url
    if body.angle is not None:
        params["angle"] = body.angle
    if body.value is None:
        return params
    fmt = commands.format_of(device)
    spec = fmt.commands.get(body.action) if fmt is not None else None
    fields = set(spec.params.model_fields) if spec is not None else set()
    if isinstance(body.value, dict) and "value" not in fields:
        params.update({str(k): v for k, v in body.value.items()})
        return params
    others = fields - params.keys()
    name = next(iter(others)) if len(others) == 1 and "value" not in fields else "value"
    params[name] = body.value
    return params


@router.post(
    "/nodes/{node_id}/actions",
    response_model=ActionResponse,
    responses=_responses(400, 404, 409, 413, 422, 429),
)
async def send_node_action(
    principal: OperatorDep,
    http: Request,
    store: StoreDep,
    commands: CommandsDep,
    now: NowDep,
    node_id: NodeIdParam,
    body: NodeAction,
) -> ActionResponse:
    """Command a node: one tracked command named by the firmware's action (docs/commands.md).

    200 once stored (sent at once when the node is online, else when it is next heard), as the
    stack's "queued" answer; its `command_id` is fieldhub's, to follow the command.
    """
    device = await node_or_none(store, node_id, now)
    if device is None:
        raise NodeNotFound()
    params = action_params(commands, device, body)
    new = NewCommand(name=body.action, params=params)
    detail: dict[str, object] = {"name": body.action, "params": params, "via": "fastapi-compat"}
    row, _ = await submit_audited(http, principal, commands, device, new, detail)
    return ActionResponse(
        message=f"Command '{body.action}' queued successfully for delivery via MQTT",
        command_id=row.command_id,
    )


# -- dashboard ------------------------------------------------------------------------------------


@router.get("/dashboard/stats", response_model=DashboardStats)
async def get_dashboard_stats(store: StoreDep, now: NowDep) -> DashboardStats:
    """Node counts and the messages of the last 24 hours."""
    nodes = await list_nodes(store, now)
    ids = [d.device_id for d in nodes]
    latest = await store.latest_values(ids)
    start = now - DAY_US
    # Every message of a node carries its most frequent metric: the messages are its count.
    names = {m.name for metrics in latest.values() for m in metrics if m.last_ts_us >= start}
    counts = await asyncio.gather(
        *(
            store.query_fleet_series(
                name,
                device_ids=ids,
                start_us=start,
                end_us=now + 1,
                interval_us=DAY_US,
                agg="count",
            )
            for name in sorted(names)
        )
    )
    return DashboardStats(
        total_devices=len(nodes),
        active_devices=sum(1 for d in nodes if d.presence == "online"),
        data_points_24h=max((sum(p.count for p in points) for points in counts), default=0),
        system_health="healthy",
        timestamp=_datetime(now).isoformat().replace("+00:00", "Z"),
    )
