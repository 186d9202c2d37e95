"""The dashboard: Jinja2 templates, plain ES modules (one per page, and the ones they share),
vendored pinned front-end libraries."""
