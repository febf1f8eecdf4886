"""Ports for the servers the tests start."""

from __future__ import annotations

import random
import socket

__all__ = ["PORTS", "free_port"]

PORTS = range(23000, 30000)  # below the kernel's ephemeral range (32768 on), and clear of
# the Redis Cluster nodes' ports and bus ports (tests/test_redis_cluster.py)
_PICK = random.SystemRandom()  # not the global generator, which a test may seed


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a server a test starts, from :data:`PORTS`: a port
    checked free can be taken before the server binds it, and outgoing connections (many,
    with the suite on two workers) take ports from the ephemeral range, never from these."""
    for _ in range(500):
        port = _PICK.choice(PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the range is full: any the kernel gives
        s.bind(("127.0.0.1", 0))
        got: int = s.getsockname()[1]
        return got
