"""Browser tests: the dashboard in Debian's chromium against a real fieldhub and Mosquitto.

A package (not a bare folder) so that the browser fixture can be package-scoped: see conftest.py.
"""
