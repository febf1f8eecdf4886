"""The browser code takes close codes, opcodes and order statuses from the Python definitions:
hub/static/hub-constants.js is generated from them, is up to date, and is the only copy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hub.edge import constants
from hub.edge.wire import ORDER_STATUS, ORDER_STATUSES
from hub.errors import CloseCode
from hub.events import Opcode

STATIC = constants.PATH.parent


def test_hub_constants_js_is_up_to_date() -> None:
    """The checked-in file is what the generator writes now (else: python -m hub.edge.constants)."""
    assert constants.PATH.read_text(encoding="utf-8") == constants.render(), (
        "hub/static/hub-constants.js is stale: run python -m hub.edge.constants"
    )
    assert constants.main(["--check"]) == 0


def _code(text: str) -> str:
    """JavaScript (or a page) without its comments."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"(?m)(^|[^:\"'])//.*$", r"\1", text)


def test_the_browser_code_keeps_no_copy_of_them() -> None:
    """hub-client.js imports the constants; no other file spells a close code or an opcode."""
    client = (STATIC / "hub-client.js").read_text(encoding="utf-8")
    assert 'from "./hub-constants.js"' in client
    numbers = {int(c) for c in CloseCode if c >= 4000} | {int(op) for op in Opcode}
    numbers -= {401, 402, 403, 404}  # also HTTP statuses, which the pages do name
    spelled = re.compile(r"\b(" + "|".join(map(str, sorted(numbers))) + r")\b")
    for path in sorted(STATIC.glob("*.js")) + sorted(STATIC.glob("*.html")):
        if path == constants.PATH:
            continue
        code = _code(path.read_text(encoding="utf-8"))
        found = spelled.findall(code)
        assert not found, f"{path.name} spells {found}: import them from hub-client.js"
        for status in ORDER_STATUSES:  # the statuses' own table is not restated either
            assert not re.search(rf"\b\d{{3}}\s*:\s*[\"']{status}[\"']", code), (path.name, status)


def test_hub_client_exports_the_python_values(tmp_path: Path) -> None:
    """Loaded by node, hub-client.js exports exactly the Python close codes, opcodes, statuses."""
    if shutil.which("node") is None:  # scripts/test installs it: a missing node is a failure
        pytest.fail("node is not installed (scripts/test installs nodejs)")
    for name in ("hub-client.js", "hub-constants.js"):
        shutil.copy(STATIC / name, tmp_path / name)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    script = (
        f"const m = await import({json.dumps(str(tmp_path / 'hub-client.js'))});"
        "console.log(JSON.stringify({close: m.CloseCode, reconnect: m.RECONNECT_CODES,"
        " opcode: m.Opcode, status: m.ORDER_STATUS, order: m.STATUS_ORDER,"
        " placed: m.orderStatus([{opcode: 501}, {opcode: 303}])}));"
    )
    out = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True,
                         text=True, check=True, timeout=30)  # fmt: skip
    got = json.loads(out.stdout)
    assert got["close"] == {c.name: int(c) for c in CloseCode}
    assert got["reconnect"] == sorted(int(c) for c in CloseCode if c.reconnect)
    assert got["opcode"] == {op.name: int(op) for op in Opcode}
    assert got["status"] == {str(k): v for k, v in ORDER_STATUS.items()}
    assert got["order"] == list(ORDER_STATUSES)
    assert got["placed"] == ORDER_STATUS[Opcode.TASK_START]
