"""Liveness (public) and Prometheus metrics (viewer)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fieldhub.api.auth import VIEWER
from fieldhub.api.deps import IngestDep, RegistryDep, StatusDep, StoreDep
from fieldhub.api.errors import AUTH_RESPONSES
from fieldhub.schemas import Health
from fieldhub.store.types import StoreError

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(
    store: StoreDep, ingest: IngestDep, status: StatusDep, response: Response
) -> Health:
    """200 while the API and the database answer (`degraded` when the broker is unreachable:
    the API keeps serving stored data, or ingest's session was taken over, or ingest's writes
    fail: a full disk, a read-only or locked database, or new readings have not reached the
    rollups for a minute; `problems` says why); 503 when the
    database does not answer, or its writes have failed for longer than the
    `store_unwritable_503_s` setting (60 s)."""
    try:
        await store.ping()
        store_ok = True
    except StoreError:
        store_ok = False
    broker = status.broker_status()
    failing_s = ingest.writes_failing_s()
    unwritable = None
    if failing_s > 0:
        unwritable = (
            f"database writes have failed for {failing_s:.0f} s ({ingest.write_failure}); "
            "messages wait unacknowledged on the broker"
        )
    if not store_ok or failing_s > status.store_unwritable_503_s:
        response.status_code = 503
    problems = [
        problem
        for problem in (
            None if store_ok else "the database does not answer",
            unwritable,
            None if broker.connected else f"ingest is not connected to {broker.url}",
            broker.problem,
            store.rollups_problem(),
        )
        if problem is not None
    ]
    return Health(
        status="degraded" if problems else "ok",
        problems=problems,
        store="error" if not store_ok else "unwritable" if unwritable else "ok",
        store_writes_failing_s=round(failing_s, 1),
        mqtt_connected=broker.connected,
        mqtt_url=broker.url,
        broker=broker.kind,
        broker_running=broker.running,
        broker_restarts=broker.restarts,
        ingest_queue_depth=ingest.queue_depth,
        batches_committed=ingest.batches_committed,
    )


# Not public (api/auth.py PUBLIC_PATHS): its labels name devices; Prometheus scrapes it with a
# viewer API token.
@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **AUTH_RESPONSES},
    dependencies=[VIEWER],
)
async def metrics(registry: RegistryDep) -> Response:
    """Prometheus metrics of this process."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
