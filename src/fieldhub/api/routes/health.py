"""Liveness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fieldhub.api.deps import PlatformDep
from fieldhub.api.models import Health
from fieldhub.store.base import StoreError

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(platform: PlatformDep, response: Response) -> Health:
    """200 while the API and the database answer (`degraded` when the broker is unreachable:
    the API keeps serving stored data); 503 when the database does not answer."""
    try:
        await platform.store.ping()
        store_ok = True
    except StoreError:
        store_ok = False
    connected = platform.mqtt_connected
    broker = platform.broker
    if not store_ok:
        response.status_code = 503
    return Health(
        status="ok" if store_ok and connected else "degraded",
        store="ok" if store_ok else "error",
        mqtt_connected=connected,
        mqtt_url=platform.mqtt_endpoint.url,
        broker="embedded" if broker is not None else "external",
        broker_running=broker.is_running if broker is not None else None,
        broker_restarts=broker.restarts if broker is not None else None,
        ingest_queue_depth=platform.ingest.queue_depth,
        batches_committed=platform.ingest.batches_committed,
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(platform: PlatformDep) -> Response:
    """Prometheus metrics of this process."""
    return Response(generate_latest(platform.registry), media_type=CONTENT_TYPE_LATEST)
