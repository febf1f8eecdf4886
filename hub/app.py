"""``hub.app:app``, the ASGI app built from the environment (``uvicorn hub.app:app``).

The entry point for any ASGI server (``hub serve`` builds the same app itself); the app is
assembled in :func:`hub.edge.app.create_app`.
"""

from hub.edge.app import app, create_app

__all__ = ["app", "create_app"]
