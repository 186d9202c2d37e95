"""Who may do what over HTTP: users and their passwords, API tokens, sessions, roles, login
throttling, the first admin's setup link and the audit log (docs/security.md).

A consumer of the store, beside ingest: the API and the pages (above it) ask `AuthService`
who a request's credentials name; nothing here knows HTTP.
"""
