"""The setup portal's form parsing (pure half of firmware/lib/portal.py)."""

from __future__ import annotations

from fieldhub_node.config import needs_portal, validate
from fieldhub_node.portal_form import FORM_HTML, apply_form, parse_form


def test_form_body_is_url_decoded() -> None:
    """`+` is a space, %XX a UTF-8 byte, a stray % stays."""
    fields = parse_form(b"ssid=My+Lab%C3%A9&password=p%26ss%=&mqtt_host=10.0.0.2&mqtt_port=1884")
    assert fields == {"ssid": "My Labé", "password": "p&ss%=", "mqtt_host": "10.0.0.2",
                      "mqtt_port": "1884"}  # fmt: skip


def test_applied_form_makes_a_valid_config_without_the_portal() -> None:
    """Empty config + the form = a config that connects instead of opening the portal."""
    raw = apply_form({}, parse_form(b"ssid=lab&password=secret12&mqtt_host=broker&mqtt_port=1884"))
    config = validate(raw)
    assert not needs_portal(config)
    assert (config["mqtt"]["host"], config["mqtt"]["port"]) == ("broker", 1884)


def test_a_bad_port_is_left_for_validation_to_name() -> None:
    """A non-numeric port stays text, so validation says what is wrong with it."""
    raw = apply_form({}, parse_form(b"ssid=lab&mqtt_host=b&mqtt_port=abc"))
    assert raw["mqtt"]["port"] == "abc"
    assert "<form" in FORM_HTML


def test_the_committed_example_config_is_valid() -> None:
    """firmware/config.example.json validates as it stands."""
    import json
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "firmware" / "config.example.json"
    config = validate(json.loads(example.read_text()))
    assert config["microphone"]["sample_rate"] == 16000
