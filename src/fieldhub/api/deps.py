"""Dependencies shared by the routers: the platform's parts from `app.state`, parsed params.

All `async def`, though none awaits: FastAPI runs a plain `def` dependency in its thread pool,
and a thread hop per dependency per request cost milliseconds (the command round trip spent
more time in those hops than in the device).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Path, Request

from fieldhub import clock
from fieldhub.api.errors import InvalidParameter
from fieldhub.protocol.ids import (
    DEVICE_ID_PATTERN,
    MAX_DEVICE_ID_CHARS,
    InvalidDeviceId,
    canonical_device_id,
)
from fieldhub.store.base import Store

if TYPE_CHECKING:
    from fieldhub.app import Platform


async def get_platform(request: Request) -> Platform:
    """The running platform (set by the app's lifespan)."""
    platform: Platform = request.app.state.platform
    return platform


async def get_store(request: Request) -> Store:
    """The store of the running platform."""
    platform: Platform = request.app.state.platform
    return platform.store


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


PlatformDep = Annotated["Platform", Depends(get_platform)]
StoreDep = Annotated[Store, Depends(get_store)]
DeviceIdDep = Annotated[str, Depends(device_id_param)]
NowDep = Annotated[int, Depends(now_us)]
