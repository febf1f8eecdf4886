#!/bin/sh
# Bench-only environment for the peers (never the project's dependencies).
# Usage: sh bench/setup.sh [VENV]   (default /tmp/benchenv)
set -e
ENV=${1:-/tmp/benchenv}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -x "$ENV/bin/python" ] || python3 -m venv "$ENV"
# The peers, and what the hub itself runs on (suite.py starts it with this environment's
# Python: pyproject.toml's dependencies and the redis extra), and py-spy for --profile.
"$ENV/bin/pip" install -q 'broadcaster[redis]' starlette 'uvicorn[standard]' uvloop httptools \
  channels channels_redis django python-socketio 'redis[hiredis]>=5.0' websockets matplotlib \
  'PyJWT[crypto]' prometheus-client msgspec py-spy
cd "$HERE/loadgen" && npm install --no-audit --no-fund --silent ws socket.io-client
