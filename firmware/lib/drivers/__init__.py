"""Device-only hardware drivers (MicroPython): sensors, microphone, servo. Never on a server."""
