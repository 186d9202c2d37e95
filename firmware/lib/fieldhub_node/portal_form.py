"""The setup portal's pure half: the HTML form, and the POSTed form body -> new config."""

import binascii

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
    "<p><label>MQTT broker port <input name=mqtt_port placeholder='1883, TLS: 8883' "
    "inputmode=numeric></label></p>"
    # The device credentials fieldhub issued (`fieldhub devices provision ID`): username = id.
    "<p><label>MQTT username <input name=mqtt_user maxlength=64></label></p>"
    "<p><label>MQTT password <input name=mqtt_password type=password maxlength=128></label></p>"
    "<p><label><input name=mqtt_tls type=checkbox value=1> TLS</label></p>"
    "<p><label>CA certificate (PEM, ca.pem from fieldhub certs init; for TLS)<br>"
    "<textarea name=mqtt_ca rows=6 cols=64></textarea></label></p>"
    "<p><button>Save and reboot</button></p></form></body></html>"
)
PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
PEM_END = "-----END CERTIFICATE-----"
MQTT_PORT = 1883
MQTT_TLS_PORT = 8883


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
    # A checkbox is sent only when ticked.
    mqtt["tls"] = bool(fields.get("mqtt_tls"))
    port = fields.get("mqtt_port", "").strip()
    default_port = MQTT_TLS_PORT if mqtt["tls"] else MQTT_PORT
    mqtt["port"] = int(port) if port.isdigit() else port or default_port
    # Empty fields mean "none" (an anonymous broker), as null does in config.json.
    mqtt["user"] = fields.get("mqtt_user", "").strip() or None
    mqtt["password"] = fields.get("mqtt_password", "") or None
    out["mqtt"] = mqtt
    return out


def ca_from_form(fields: dict[str, str]) -> bytes | None:
    """The pasted CA certificate as DER (what the node's TLS context loads), or None when the
    field is empty; ValueError when it is not one PEM certificate."""
    text = fields.get("mqtt_ca", "").strip()
    if not text:
        return None
    start = text.find(PEM_BEGIN)
    end = text.find(PEM_END)
    if start < 0 or end < start:
        raise ValueError("the CA certificate must be pasted whole, from %s to %s" % (PEM_BEGIN, PEM_END))
    body = "".join(text[start + len(PEM_BEGIN) : end].split())
    try:
        der = binascii.a2b_base64(body)
    except ValueError:  # CPython's binascii.Error is one; MicroPython raises ValueError itself
        raise ValueError("the CA certificate is not valid base64 PEM") from None
    if not der or der[0] != 0x30:
        raise ValueError("the pasted text is not a certificate")
    return bytes(der)
