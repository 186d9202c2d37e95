"""schemathesis over the whole OpenAPI of a running fieldhub: bad requests get 4xx, never 500.

Runs the schemathesis CLI (coverage, fuzzing and stateful phases, every check) against a real
`fieldhub up`. Its pytest plugin is not used: it breaks on pytest 9.2 (`Function._nodeid`).
Two checks are excluded on purpose. `positive_data_acceptance`: times, intervals and cursors are
strings whose rules (ISO 8601 or epoch, `5m`, our own cursors) JSON schema cannot state, so a
schema-valid garbage value rightly gets 422. `negative_data_rejection`: a query string has no
types, so the "boolean" `metric=false` it sends is the valid metric name "false".
`ignored_auth`: this fieldhub runs in demo mode (no authentication, as FieldhubProcess starts it
by default), where every request is let in by design although the document declares the
security schemes; tests/security/test_api_contract_auth.py runs schemathesis with auth on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import parse_mqtt_url
from support.fieldhub_process import FieldhubProcess
from support.mqtt import connected_publisher, publish_all
from support.sim_devices import SimDevice

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Enough examples per operation to hit boundaries and garbage (the coverage phase adds its own
# boundary cases). 50 made each of the two runs ~80 s at 76 operations; 30 keeps the suite under
# 15 minutes.
EXAMPLES_PER_OPERATION = 30
# `POST .../commands?wait_s=` may rightly hold a response up to 30 s (a command to a device that
# never answers, until its timeout); schemathesis's default limit is 10 s.
MAX_RESPONSE_S = 35


def run_schemathesis(
    base_url: str, tmp_path: Path, *, exclude: str, headers: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """The schemathesis CLI over a running fieldhub's whole OpenAPI, every check but `exclude`
    (both contract runs: this one in demo mode, tests/security's with authentication on)."""
    return subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{base_url}/openapi.json",
            *(arg for header in headers for arg in ("--header", header)),
            "--checks",
            "all",
            "--exclude-checks",
            exclude,
            "--max-response-time",
            str(MAX_RESPONSE_S),
            "--request-timeout",
            str(MAX_RESPONSE_S + 5),
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--seed",
            "1",
            "--report-dir",
            str(tmp_path / "schemathesis"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_api_conforms_to_its_openapi(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """Every documented operation answers within its schema; no 5xx for any generated input."""
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=mosquitto.url).start()
    # A device running fieldhub's firmware core: commands sent to it are answered at once (ok,
    # or an error ack for the generated names it does not know), as a real fleet's would be.
    device = SimDevice(endpoint=parse_mqtt_url(mosquitto.url), device_id="contract-1", seed=1)
    device.start()
    device.publish()
    publisher = connected_publisher(mosquitto.url)
    publish_all(publisher, [("devices/contract-2/telemetry", b"{broken")])
    publisher.stop()
    result = run_schemathesis(
        fh.base_url,
        tmp_path,
        exclude="positive_data_acceptance,negative_data_rejection,ignored_auth",
    )
    device.stop()
    assert fh.stop() == 0
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
