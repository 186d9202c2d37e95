"""schemathesis over the whole OpenAPI of a fieldhub with authentication on, as an admin.

The same run as tests/integration/test_api_contract.py (see there for the two checks left out
and why), with an admin API token on every request and `ignored_auth` kept: schemathesis also
sends each operation without the token, and a 2xx there fails the run. The token is made by no
user (support/auth.add_token), so the users the fuzzer creates, changes and deletes cannot
revoke it along with its maker.
"""

from __future__ import annotations

from pathlib import Path

from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import parse_mqtt_url
from integration.test_api_contract import run_schemathesis
from support.auth import add_token
from support.fieldhub_process import FieldhubProcess
from support.sim_devices import SimDevice


def test_api_conforms_to_its_openapi_with_auth_on(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    """No 5xx for any input with an admin token; no 2xx without it (ignored_auth)."""
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=mosquitto.url, auth=True)
    fh.data_dir.mkdir(parents=True)
    token = add_token(fh.db_url, "admin")
    fh.start()
    device = SimDevice(endpoint=parse_mqtt_url(mosquitto.url), device_id="contract-a1", seed=1)
    device.start()
    device.publish()
    result = run_schemathesis(
        fh.base_url,
        tmp_path,
        exclude="positive_data_acceptance,negative_data_rejection",
        headers=(f"Authorization: Bearer {token}",),
    )
    device.stop()
    assert fh.stop() == 0
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
