"""The MQTT transport: the only package that imports an MQTT client library (in `client.py`).

Everything else sees `InboundMessage`, ack tokens, and small publish/subscribe objects;
`endpoint.py` (broker URLs) loads no client library, so settings can use it.
"""
