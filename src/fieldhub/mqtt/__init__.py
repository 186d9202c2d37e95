"""The MQTT transport: the only package that imports an MQTT client library (paho-mqtt).

Everything else sees `InboundMessage`, ack tokens, and small publish/subscribe objects:
`subscriber.py` (`MqttSubscriber`, the durable ingest subscriber), `publisher.py`
(`MqttPublisher`, `Will`), both built on `paho_client.py` (paho's client with fieldhub's
overrides, `end_session`). `endpoint.py` (broker URLs) loads no client library, so settings can
use it; this package's `__init__` imports nothing.
"""
