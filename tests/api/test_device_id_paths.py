"""Device ids in REST API paths: every route taking `{device_id}` goes through `DeviceIdDep`, so
an id the device contract refuses (docs/protocol.md, Device ids) is a 422 before any handler or
store runs. The path's OpenAPI pattern refuses most (its message quotes the pattern); what only
`canonical_device_id` catches gets its message."""

from __future__ import annotations

import httpx
import pytest

from fieldhub.api.deps import DeviceIdDep
from fieldhub.api.errors import install_error_handlers
from fieldhub.app import FieldhubApp
from fieldhub.protocol.ids import MAX_DEVICE_ID_CHARS


def make_app() -> FieldhubApp:
    app = FieldhubApp()
    install_error_handlers(app)

    @app.get("/api/v1/devices/{device_id}")
    async def device(device_id: DeviceIdDep) -> dict[str, str]:
        return {"id": device_id}

    return app


async def get(path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://fieldhub") as client:
        return await client.get(path)


@pytest.mark.parametrize(
    "segment",
    [
        # Percent-encoded: a client resolves a literal `..` away before sending (RFC 3986), but
        # the server decodes `%2E%2E` into the path parameter.
        "%2E%2E",
        "%2E",
        "...",
        "a%00b",
        "a%0A",
        "a%20b",
        "a%2Bb",
        "a%23b",
        "n" * (MAX_DEVICE_ID_CHARS + 1),
    ],
)
async def test_an_id_the_contract_refuses_is_a_422(segment: str) -> None:
    """Dots alone, control characters, white space, wildcards and over-long ids: 422 JSON."""
    response = await get(f"/api/v1/devices/{segment}")
    assert response.status_code == 422, response.text
    assert "device_id" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("segment", "canonical"),
    [
        ("3ce90e72124c", "3C:E9:0E:72:12:4C"),
        ("ESP32-3C:E9:0E:72:12:4C", "ESP32-3C:E9:0E:72:12:4C"),
        ("esp32_ab12", "esp32_ab12"),
        ("node_01", "node_01"),
        ("a..b", "a..b"),
    ],
)
async def test_real_ids_reach_the_handler_canonical(segment: str, canonical: str) -> None:
    """The stacks' ids pass, MACs canonicalised."""
    response = await get(f"/api/v1/devices/{segment}")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": canonical}
