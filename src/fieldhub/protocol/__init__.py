"""The pure protocol core: topics, profiles, payload decoding, timestamps and device ids.

Nothing in this package performs I/O or imports an MQTT client, a database driver or asyncio:
it turns (topic, payload bytes, receive time) into readings, attributes and presence, or into a
rejection with a reason. Transports and stores speak these types.
"""
