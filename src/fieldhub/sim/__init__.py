"""Simulated devices for every supported profile, for demos and functional tests.

`fieldhub sim` and `fieldhub up --demo` run a fleet with `run_sim`/`start_sim_in_background`;
tests drive single devices (`NativeDevice`, `ReadingsGateway`) directly. The payload builders and
sensor models are pure and reusable. Load testing is `bench/`, not this package.
"""

from fieldhub.sim.fleet import SimProfile, run_sim, start_sim_in_background
from fieldhub.sim.native import NativeDevice
from fieldhub.sim.payloads import (
    OFFLINE_PAYLOAD,
    ONLINE_PAYLOAD,
    BoundedWalk,
    NativeTelemetry,
    SensorModel,
    SensorSample,
    mac_for_index,
    native_status_topic,
    native_telemetry_payload,
    native_telemetry_topic,
    readings_gateway_payload,
    readings_gateway_topic,
    readings_temperature_payload,
    readings_temperature_topic,
    rssi_percent,
)
from fieldhub.sim.readings import ReadingsGateway
from fieldhub.sim.stats import PublishCounter, SimStats

__all__ = [
    "OFFLINE_PAYLOAD",
    "ONLINE_PAYLOAD",
    "BoundedWalk",
    "NativeDevice",
    "NativeTelemetry",
    "PublishCounter",
    "ReadingsGateway",
    "SensorModel",
    "SensorSample",
    "SimProfile",
    "SimStats",
    "mac_for_index",
    "native_status_topic",
    "native_telemetry_payload",
    "native_telemetry_topic",
    "readings_gateway_payload",
    "readings_gateway_topic",
    "readings_temperature_payload",
    "readings_temperature_topic",
    "rssi_percent",
    "run_sim",
    "start_sim_in_background",
]
