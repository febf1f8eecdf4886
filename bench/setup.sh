#!/bin/sh
# Bench-only environment for the peers (never the project's dependencies).
# Usage: sh bench/setup.sh [VENV]   (default /tmp/benchenv)
set -e
ENV=${1:-/tmp/benchenv}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -x "$ENV/bin/python" ] || python3 -m venv "$ENV"
"$ENV/bin/pip" install -q 'broadcaster[redis]' starlette uvicorn uvloop httptools \
  channels channels_redis django python-socketio 'redis>=4.2' websockets matplotlib pyjwt
cd "$HERE/loadgen" && npm install --no-audit --no-fund --silent ws socket.io-client
