"""What the package declares can be found: the console script and the ASGI entry point."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_console_script_names_a_callable() -> None:
    """``[project.scripts]`` points at functions that exist (the hub command once broke so)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "hub" in scripts
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target


def test_the_asgi_app_is_hub_app_app() -> None:
    """``uvicorn hub.app:app`` (the Procfile's command) finds an ASGI callable."""
    assert callable(importlib.import_module("hub.app").app)
