"""hub: a real-time WebSocket stream hub for delivery platforms.

Every order is a stream: a durable, ordered log of events committed to the shared
streams DB, then fanned out live over WebSockets. Start at :mod:`hub.edge.app`.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
