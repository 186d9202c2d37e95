# shellcheck shell=bash
# Sourced by the scripts in this folder: installs what fieldhub needs, then sets ROOT and VENV.
# Idempotent: a second run only checks (a stamp records the pyproject.toml it installed from).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
export ROOT VENV

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root to run: $* (install it yourself or run as root)"; fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "missing $*; this script installs with apt-get (Debian/Ubuntu); install $* with your package manager"
    say "installing $* with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Debian's chromium for the browser tests (tests/e2e): Playwright drives it through
# executable_path, because `playwright install` downloads its own browser builds, which this
# project's machines cannot fetch. Only scripts/test calls this; running fieldhub needs no browser.
ensure_chromium() {
    [ -x /usr/bin/chromium ] || apt_install chromium
    [ -x /usr/bin/chromium ] || die "apt-get installed chromium but /usr/bin/chromium is missing"
}

# Debian's rabbitmq-server for tests/integration/test_rabbitmq_broker.py: fieldhub against
# RabbitMQ's MQTT plugin, the FastAPI stack's broker. The tests start a private node of their own
# (tests/support/rabbitmq.py) and never use the system one; in CI they fail, not skip, without it.
# Installing the package may also start a system node (on 5672); the tests do not depend on it.
ensure_rabbitmq() {
    [ -x /usr/sbin/rabbitmq-server ] || apt_install rabbitmq-server
    [ -x /usr/sbin/rabbitmq-server ] || die "apt-get installed rabbitmq-server but /usr/sbin/rabbitmq-server is missing"
}

# Debian's postgresql for the PostgreSQL tests (tests/store runs on every backend): the tests make
# a private cluster of their own with initdb and pg_ctl (tests/support/postgres.py, as user
# `postgres` when run as root) and never use the system server; in CI they fail, not skip,
# without the binaries. Debian keeps them off PATH, in /usr/lib/postgresql/<major>/bin. Installing
# the package may also create and start a system server (on 5432); the tests do not depend on it.
# FIELDHUB_TEST_POSTGRES_BIN names other binaries (or none) for the tests, so nothing is installed.
have_postgres_server() {
    local bin
    bin="$(pg_config --bindir 2>/dev/null || true)"
    [ -n "$bin" ] && [ -x "$bin/initdb" ] && return 0
    for bin in /usr/lib/postgresql/*/bin; do
        [ -x "$bin/initdb" ] && return 0
    done
    command -v initdb >/dev/null 2>&1
}

ensure_postgres() {
    [ -z "${FIELDHUB_TEST_POSTGRES_BIN:-}" ] || return 0
    have_postgres_server || apt_install postgresql
    have_postgres_server || die "apt-get installed postgresql but no initdb is in /usr/lib/postgresql/*/bin"
}

# The fault suite's tools (tests/faults, tests/support/faults.py): Debian's faketime (libfaketime,
# preloaded into one fieldhub to step its wall clock, never the machine's) and strace (attached
# to fieldhub to make its database writes fail with EROFS, a file system gone read-only: Linux
# refuses `remount,ro` while the database is open). Only scripts/test calls this.
ensure_fault_tools() {
    local missing=()
    compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null || missing+=(faketime)
    command -v strace >/dev/null 2>&1 || missing+=(strace)
    [ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
    compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null || die "apt-get installed faketime but no libfaketimeMT.so.1 is in /usr/lib/*/faketime"
}

# Python 3.11+: the interpreter named by $PYTHON, else python3.11, else python3 if new enough.
find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}

PY="$(find_python)" || { apt_install python3 python3-venv; PY="$(find_python)" || die "Python 3.11 or newer is required"; }

# Debian keeps mosquitto in /usr/sbin, which is not on a normal user's PATH.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    apt_install mosquitto mosquitto-clients
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --help >/dev/null 2>&1 || apt_install python3-venv
    say "creating virtual environment in .venv"
    "$PY" -m venv "$VENV" || { apt_install python3-venv; rm -rf "$VENV"; "$PY" -m venv "$VENV"; }
fi

stamp="$VENV/.fieldhub-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing fieldhub and its test tools into .venv (first run takes a minute)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"
    echo "$want" > "$stamp"
fi
