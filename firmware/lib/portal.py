"""First-boot setup portal (device only): an open access point and a one-page HTTP form.

Opened when config.json has no WiFi network. The person joins `fieldhub-setup-XXXXXX`, opens
http://192.168.4.1/, enters WiFi and broker; the node validates, writes config.json and reboots.
One request at a time on a blocking socket: nothing else runs while the node is unconfigured.
"""

import json
import socket

import machine
import network
from fieldhub_node.config import ConfigError, validate
from fieldhub_node.portal_form import FORM_HTML, apply_form, ca_from_form, parse_form

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass

# A form post is a few hundred bytes; refuse anything that could exhaust the heap.
MAX_REQUEST_BYTES = 4096


def _respond(conn: Any, status: str, body: str) -> None:
    conn.send(("HTTP/1.0 %s\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n" % status).encode())
    conn.send(body.encode())


def _read_request(conn: Any) -> tuple[str, bytes]:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < MAX_REQUEST_BYTES:
        chunk = conn.recv(512)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    request_line = lines[0].decode() if lines else ""
    length = 0
    for line in lines[1:]:
        if line.lower().startswith(b"content-length:"):
            length = min(int(line[15:].strip() or b"0"), MAX_REQUEST_BYTES)
    while len(body) < length:
        chunk = conn.recv(512)
        if not chunk:
            break
        body += chunk
    return request_line, body


def run(raw_config: dict[str, Any], mac: bytes, path: str = "config.json") -> None:
    """Serve the form until a valid configuration was saved, then reboot (never returns)."""
    ap = network.WLAN(network.AP_IF)
    ap.active(True)
    # The MAC's last three bytes tell two unconfigured nodes in one room apart.
    ap.config(essid="fieldhub-setup-%02X%02X%02X" % (mac[3], mac[4], mac[5]), authmode=0)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(socket.getaddrinfo("0.0.0.0", 80)[0][-1])
    server.listen(1)
    print("portal: join the WiFi network", ap.config("essid"), "and open http://192.168.4.1/")
    while True:
        conn, _ = server.accept()
        try:
            request_line, body = _read_request(conn)
            if request_line.startswith("POST /save"):
                fields = parse_form(body)
                candidate = apply_form(raw_config, fields)
                try:
                    config = validate(candidate)
                    ca = ca_from_form(fields)
                    if config["mqtt"]["tls"] and ca is None:
                        raise ConfigError(["TLS needs the CA certificate: paste ca.pem"])
                except (ConfigError, ValueError) as exc:
                    _respond(conn, "400 Bad Request", "<p>%s</p>%s" % (exc, FORM_HTML))
                    continue
                if ca is not None:
                    # Written before config.json: a config naming a CA file that is not there
                    # would stop the node at its next boot.
                    with open(config["mqtt"]["ca"], "wb") as f:
                        f.write(ca)
                with open(path, "w") as f:
                    json.dump(candidate, f)
                _respond(conn, "200 OK", "<p>Saved. The node reboots and joins your network.</p>")
                conn.close()
                machine.reset()
            else:
                _respond(conn, "200 OK", FORM_HTML)
        except (OSError, ValueError) as exc:
            # A client that went away or sent garbage must not end the portal.
            print("portal: request failed:", exc)
        finally:
            conn.close()
