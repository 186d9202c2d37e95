"""The setup portal's pure half: the HTML form, and the POSTed form body -> new config."""

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass

FORM_HTML = (
    "<!doctype html><html><head><meta name=viewport content='width=device-width'>"
    "<title>fieldhub node setup</title></head><body><h1>fieldhub node setup</h1>"
    "<form method=post action=/save>"
    "<p><label>WiFi network <input name=ssid maxlength=32 required></label></p>"
    "<p><label>WiFi password <input name=password type=password maxlength=64></label></p>"
    "<p><label>MQTT broker host <input name=mqtt_host maxlength=253 required></label></p>"
    "<p><label>MQTT broker port <input name=mqtt_port value=1883 inputmode=numeric></label></p>"
    "<p><button>Save and reboot</button></p></form></body></html>"
)


def _unquote(text: str) -> str:
    """application/x-www-form-urlencoded value -> text (`+` is a space, %XX a byte)."""
    raw = bytearray()
    data = text.replace("+", " ").encode()
    i = 0
    while i < len(data):
        c = data[i]
        if c == 0x25 and i + 2 < len(data):  # '%' followed by two characters
            try:
                raw.append(int(data[i + 1 : i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        raw.append(c)
        i += 1
    return bytes(raw).decode()


def parse_form(body: bytes) -> dict[str, str]:
    """The fields of a urlencoded form body; the last of repeated names wins."""
    fields = {}
    for pair in body.decode().split("&"):
        if "=" in pair:
            name, value = pair.split("=", 1)
            fields[_unquote(name)] = _unquote(value)
    return fields


def apply_form(config: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """A raw config (to validate and write as config.json) with the form's WiFi and broker."""
    out = {}
    for key in config:
        out[key] = config[key]
    wifi = dict(out.get("wifi") or {})
    wifi["ssid"] = fields.get("ssid", "").strip()
    wifi["password"] = fields.get("password", "")
    out["wifi"] = wifi
    mqtt = dict(out.get("mqtt") or {})
    mqtt["host"] = fields.get("mqtt_host", "").strip()
    port = fields.get("mqtt_port", "").strip()
    mqtt["port"] = int(port) if port.isdigit() else port or 1883
    out["mqtt"] = mqtt
    return out
