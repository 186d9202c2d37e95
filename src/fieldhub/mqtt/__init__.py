"""The MQTT transport: the only package that imports an MQTT client library.

Everything else sees `InboundMessage`, ack tokens, and small publish/subscribe objects.
"""

from fieldhub.mqtt.client import (
    AckToken,
    MqttEndpoint,
    MqttPublisher,
    MqttSubscriber,
    Will,
    parse_mqtt_url,
)

__all__ = ["AckToken", "MqttEndpoint", "MqttPublisher", "MqttSubscriber", "Will", "parse_mqtt_url"]
