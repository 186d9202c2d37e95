"""Dependencies shared by the routers: one per platform part (from `app.state`), parsed params.

Routes ask for the part they use (`StoreDep`, `CommandsDep`...), never for the whole platform:
the API layer then depends only on the parts' own modules, not on the composition root that
builds them (`fieldhub/platform.py` puts each part on `app.state`).

All `async def`, though none awaits: FastAPI runs a plain `def` dependency in its thread pool,
and a thread hop per dependency per request cost milliseconds (the command round trip spent
more time in those hops than in the device).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from prometheus_client import CollectorRegistry

from fieldhub import clock
from fieldhub.api.errors import InvalidParameter
from fieldhub.commands.service import CommandService
from fieldhub.ingest.pipeline import Ingest
from fieldhub.live.hub import LiveHub
from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.ids import (
    DEVICE_ID_PATTERN,
    MAX_DEVICE_ID_CHARS,
    InvalidDeviceId,
    canonical_device_id,
)
from fieldhub.status import StatusReporter
from fieldhub.store.base import Store


async def get_store(request: Request) -> Store:
    """The platform's store."""
    store: Store = request.app.state.store
    return store


async def get_commands(request: Request) -> CommandService:
    """The platform's command service."""
    commands: CommandService = request.app.state.commands
    return commands


async def get_ingest(request: Request) -> Ingest:
    """The platform's ingest pipeline (the HTTP ingest route submits to it)."""
    ingest: Ingest = request.app.state.ingest
    return ingest


async def get_decoder(request: Request) -> MessageDecoder:
    """The decoder of the enabled profiles."""
    decoder: MessageDecoder = request.app.state.decoder
    return decoder


async def get_status(request: Request) -> StatusReporter:
    """The platform's status reporter (health, `/api/v1/system`)."""
    status: StatusReporter = request.app.state.status
    return status


async def get_live(request: Request) -> LiveHub:
    """The live hub that serves `/api/v1/live`."""
    live: LiveHub = request.app.state.live
    return live


async def get_registry(request: Request) -> CollectorRegistry:
    """This process's Prometheus registry."""
    registry: CollectorRegistry = request.app.state.registry
    return registry


async def device_id_param(
    device_id: Annotated[
        str,
        Path(
            description="Device id; any MAC spelling finds the device",
            max_length=MAX_DEVICE_ID_CHARS,
            pattern=DEVICE_ID_PATTERN,
        ),
    ],
) -> str:
    """The canonical device id from the path; 422 when it cannot be a device id."""
    try:
        return canonical_device_id(device_id)
    except InvalidDeviceId as exc:
        raise InvalidParameter(str(exc)) from None


async def now_us() -> int:
    """The request's notion of now, in epoch microseconds."""
    return clock.now_us()


StoreDep = Annotated[Store, Depends(get_store)]
CommandsDep = Annotated[CommandService, Depends(get_commands)]
IngestDep = Annotated[Ingest, Depends(get_ingest)]
DecoderDep = Annotated[MessageDecoder, Depends(get_decoder)]
StatusDep = Annotated[StatusReporter, Depends(get_status)]
LiveDep = Annotated[LiveHub, Depends(get_live)]
RegistryDep = Annotated[CollectorRegistry, Depends(get_registry)]
DeviceIdDep = Annotated[str, Depends(device_id_param)]
NowDep = Annotated[int, Depends(now_us)]
