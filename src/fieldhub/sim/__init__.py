"""Simulated devices for every supported profile, for demos and functional tests.

`fieldhub sim` and `fieldhub up --demo` run a fleet with `run_sim`/`start_sim_in_background`;
tests drive single devices directly: `NativeDevice`, `ReadingsGateway`, and one kind per legacy
stack, `FastApiNode` (FastAPI/RabbitMQ), `IotNode` (Raspberry Pi/Mosquitto) and `WindowSensor`
(Go/ClickHouse window control). The payload builders and sensor models are pure and reusable.
Load testing is `bench/`, not this package.
"""

from fieldhub.sim.fastapi_node import (
    Actuators,
    FastApiNode,
    FastApiState,
    Handled,
    PublishStatus,
    Readings,
    Restart,
    UpdateFirmware,
    apply_fastapi_command,
    fastapi_data_payload,
    fastapi_heartbeat_payload,
    fastapi_node_id,
    fastapi_status_payload,
    handle_command,
    smart_automation,
)
from fieldhub.sim.fleet import (
    DEVICE_KINDS,
    SIM_PROFILES,
    SimProfile,
    run_sim,
    start_sim_in_background,
)
from fieldhub.sim.iot_node import (
    CommandResult,
    IotNode,
    Led,
    apply_iot_node_command,
    iot_node_offline_payload,
    iot_node_status_payload,
    iot_node_telemetry_payload,
)
from fieldhub.sim.link import LinkedDevice, Periodic
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
from fieldhub.sim.window_sensor import (
    WindowMotor,
    WindowSensor,
    ambient_sound,
    parse_window_control,
    rms,
    sensor_audio_payload,
    sensor_number_payload,
    tone,
    wav_bytes,
)

__all__ = [
    "DEVICE_KINDS",
    "OFFLINE_PAYLOAD",
    "ONLINE_PAYLOAD",
    "SIM_PROFILES",
    "Actuators",
    "BoundedWalk",
    "CommandResult",
    "FastApiNode",
    "FastApiState",
    "Handled",
    "IotNode",
    "Led",
    "LinkedDevice",
    "NativeDevice",
    "NativeTelemetry",
    "Periodic",
    "PublishCounter",
    "PublishStatus",
    "Readings",
    "ReadingsGateway",
    "Restart",
    "SensorModel",
    "SensorSample",
    "SimProfile",
    "SimStats",
    "UpdateFirmware",
    "WindowMotor",
    "WindowSensor",
    "ambient_sound",
    "apply_fastapi_command",
    "apply_iot_node_command",
    "fastapi_data_payload",
    "fastapi_heartbeat_payload",
    "fastapi_node_id",
    "fastapi_status_payload",
    "handle_command",
    "iot_node_offline_payload",
    "iot_node_status_payload",
    "iot_node_telemetry_payload",
    "mac_for_index",
    "native_status_topic",
    "native_telemetry_payload",
    "native_telemetry_topic",
    "parse_window_control",
    "readings_gateway_payload",
    "readings_gateway_topic",
    "readings_temperature_payload",
    "readings_temperature_topic",
    "rms",
    "rssi_percent",
    "run_sim",
    "sensor_audio_payload",
    "sensor_number_payload",
    "smart_automation",
    "start_sim_in_background",
    "tone",
    "wav_bytes",
]
