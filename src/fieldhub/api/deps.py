"""Dependencies shared by the routers: one per platform part (from `app.state`), parsed params.

Routes ask for the part they use (`StoreDep`, `CommandsDep`...), never for the whole platform:
the API layer then depends only on the parts' own modules, not on the composition root that
builds them (`fieldhub/platform.py` puts each part on `app.state`).

All `async def`, though none awaits: FastAPI runs a plain `def` dependency in its thread pool,
and a thread hop per dependency per request cost milliseconds (the command round trip spent
more time in those hops than in the device).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from prometheus_client import CollectorRegistry

from fieldhub import clock
from fieldhub.commands.service import CommandService
from fieldhub.errors import Invalid
from fieldhub.ingest.pipeline import Ingest
from fieldhub.live.hub import LiveHub
from fieldhub.ml.loop import WindowLoop
from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.ids import (
    DEVICE_ID_PATTERN,
    MAX_DEVICE_ID_CHARS,
    InvalidDeviceId,
    canonical_device_id,
)
from fieldhub.rules.engine import RuleEngine
from fieldhub.security.device_access import DeviceAccess
from fieldhub.status import StatusReporter
from fieldhub.store.base import Store


def _part(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency answering the platform part `app.state.<name>`; the `Annotated` alias below
    it declares the part's type."""

    async def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    get.__name__ = f"get_{name}"
    return get


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
        raise Invalid(str(exc)) from None


async def now_us() -> int:
    """The request's notion of now, in epoch microseconds."""
    return clock.now_us()


StoreDep = Annotated[Store, Depends(_part("store"))]
CommandsDep = Annotated[CommandService, Depends(_part("commands"))]
IngestDep = Annotated[Ingest, Depends(_part("ingest"))]
DecoderDep = Annotated[MessageDecoder, Depends(_part("decoder"))]
StatusDep = Annotated[StatusReporter, Depends(_part("status"))]
LiveDep = Annotated[LiveHub, Depends(_part("live"))]
RegistryDep = Annotated[CollectorRegistry, Depends(_part("registry"))]
DeviceAccessDep = Annotated[DeviceAccess, Depends(_part("device_access"))]
RulesDep = Annotated[RuleEngine, Depends(_part("rules"))]
WindowLoopDep = Annotated[WindowLoop, Depends(_part("ml"))]
DeviceIdDep = Annotated[str, Depends(device_id_param)]
NowDep = Annotated[int, Depends(now_us)]
