"""The dashboard: Jinja2 templates, one ES module, vendored pinned front-end libraries."""
