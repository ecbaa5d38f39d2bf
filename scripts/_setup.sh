# Shared set-up for scripts/demo and scripts/test (sourced, not run).
# Creates the virtual environment, installs the project, and makes sure RabbitMQ answers.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
export LIENTHONG_AMQP_URL="${LIENTHONG_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"

say() { printf '%s\n' "lienthong setup: $*" >&2; }
die() { say "$*"; exit 1; }

find_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_venv() {
    local stamp="$VENV/.lienthong-installed" want
    want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    local python
    python=$(find_python) || die "Python 3.11 or newer is needed (Debian: apt-get install python3 python3-venv)"
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating the virtual environment in .venv"
        "$python" -m venv "$VENV" || die "cannot create a venv (Debian: apt-get install python3-venv)"
    fi
    say "installing the project and its dependencies"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev]"
    echo "$want" >"$stamp"
}

amqp_ready() { "$VENV/bin/python" -m gateway.readiness amqp "$LIENTHONG_AMQP_URL" --timeout "${1:-0}" 2>/dev/null; }

is_local_url() {
    case "$LIENTHONG_AMQP_URL" in
        *@127.0.0.1:* | *@127.0.0.1/* | *@localhost:* | *@localhost/* | amqp://127.0.0.1* | amqp://localhost*) return 0 ;;
        *) return 1 ;;
    esac
}

ensure_rabbitmq() {
    amqp_ready 0 && return 0
    if ! is_local_url; then
        "$VENV/bin/python" -m gateway.readiness amqp "$LIENTHONG_AMQP_URL" --timeout 30 ||
            die "RabbitMQ at LIENTHONG_AMQP_URL does not answer; start it or point LIENTHONG_AMQP_URL at one"
        return 0
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            say "installing rabbitmq-server (Debian package)"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null ||
                die "apt-get install rabbitmq-server failed"
        else
            die "RabbitMQ is not installed. Run: sudo apt-get install rabbitmq-server && sudo rabbitmq-server -detached (or set LIENTHONG_AMQP_URL)"
        fi
    fi
    say "starting the local RabbitMQ (rabbitmq-server -detached)"
    if [ "$(id -u)" = 0 ]; then
        rabbitmq-server -detached >/dev/null 2>&1 || true
    else
        die "RabbitMQ is installed but stopped. Run: sudo rabbitmq-server -detached"
    fi
    amqp_ready 90 || die "RabbitMQ did not accept an AMQP connection within 90 s; see /var/log/rabbitmq/"
    say "RabbitMQ is up"
}
