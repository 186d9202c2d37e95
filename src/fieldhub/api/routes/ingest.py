"""HTTP ingest for devices without MQTT: the same payloads, the same decoding, the same store."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from fieldhub.api.auth import OPERATOR
from fieldhub.api.deps import DecoderDep, IngestDep
from fieldhub.api.errors import ERROR_RESPONSES, ErrorBody, ErrorResponse
from fieldhub.errors import NotFound, TooLarge
from fieldhub.protocol.messages import CommandReply, Ignored, InferenceRequest, Rejected
from fieldhub.protocol.profiles import BUILTIN_PROFILES
from fieldhub.protocol.topics import filter_matches
from fieldhub.schemas import IngestAccepted

# Storing readings over HTTP is writing as any device: operator, like commanding one.
router = APIRouter(prefix="/api/v1/ingest", tags=["ingest"], dependencies=[OPERATOR])

# The built-in profiles; one that is not enabled in this process answers 404.
ProfileName = Enum("ProfileName", {name: name for name in BUILTIN_PROFILES}, type=str)  # type: ignore[misc]


@router.post(
    "/{profile}",
    status_code=201,
    response_model=IngestAccepted,
    responses={**ERROR_RESPONSES, 413: {"model": ErrorResponse, "description": "Body too large"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def ingest(
    profile: ProfileName,
    request: Request,
    ingest: IngestDep,
    decoder: DecoderDep,
    topic: Annotated[
        str,
        Query(
            min_length=1,
            max_length=512,
            description="The topic the device would publish to, e.g. devices/node-1/telemetry",
        ),
    ],
) -> IngestAccepted | JSONResponse:
    """Store one message as if it arrived on `topic` over MQTT.

    A payload the decoder rejects is kept in dead letters and answered with 422 and its reason.
    """
    enabled = {p.name: p for p in decoder.table.profiles}
    name = str(profile.value)
    if name not in enabled:
        raise NotFound(f"profile {name!r} is not enabled; enabled: {', '.join(sorted(enabled))}")
    if not any(filter_matches(sub, topic) for sub in enabled[name].subscriptions):
        return _rejected(
            422,
            "topic_not_in_profile",
            f"topic {topic!r} is outside the {name} profile "
            f"({', '.join(enabled[name].subscriptions)})",
        )
    limit = decoder.max_payload_bytes(topic)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"body is {declared} bytes, the limit for this topic is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"body is over the {limit}-byte limit for this topic")
    outcome = await ingest.submit(topic, bytes(body))
    result = outcome.result
    if isinstance(result, Rejected):
        return _rejected(422, result.reason.value, f"{result.detail} (kept in dead letters)")
    if isinstance(result, Ignored):
        return _rejected(422, "not_data", f"topic {topic!r} carries {result.channel}, not data")
    if isinstance(result, CommandReply | InferenceRequest):
        # A device answering a command, or a window decision asked for, over HTTP: handled after
        # the batch (the reply applied with it, the request by the ML loop), no readings.
        return IngestAccepted(device_id=result.device_id, readings=0, written=0, duplicates=0)
    return IngestAccepted(
        device_id=result.device_id,
        readings=len(result.readings),
        written=outcome.readings_written,
        duplicates=outcome.readings_duplicate,
    )


def _rejected(status: int, code: str, message: str) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status)
