"""The HTTP API: one router per resource, JSON errors, OpenAPI at /docs."""
