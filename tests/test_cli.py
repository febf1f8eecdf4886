"""The command line as a newcomer uses it: hub demo --play, hub token, hub serve's $PORT."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jwt

from tests.conftest import SECRET, free_port, timeout


def run_hub(*args: str, data: Path, extra: dict[str, str] | None = None,
            seconds: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {**os.environ, "HUB_DATA_DIR": str(data), "HUB_SECRET": SECRET, **(extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        env=env, capture_output=True, text=True, timeout=timeout(seconds), check=False,
    )  # fmt: skip


def test_demo_play_drives_the_seed_order_and_prints_its_table(tmp_path: Path) -> None:
    """`hub demo --play --exit` seeds, serves, plays Steps 1-11 and prints the 12-row table."""
    port = free_port()
    out = run_hub("demo", "--play", "--exit", "--pause", "0", "--port", str(port),
                  data=tmp_path / "data")  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for page in ("customer.html#token=", "kitchen.html#token=", "driver.html#token="):
        assert f"http://127.0.0.1:{port}/{page}" in text
    assert re.search(rf"http://127\.0\.0\.1:{port}/#customer=\S+&kitchen=\S+&driver=\S+", text)
    assert "Step 11 stream archived" in text
    rows = [line for line in text.splitlines() if re.match(r"\|\s+\d+ \|", line)]
    names = [row.split("|")[3].strip() for row in rows]
    assert names == [
        "ORDER_CREATE", "INVOICE_PAYMENT", "TASK_CREATE", "TASK_START", "SALE_OUT", "SALE_OUT",
        "TASK_DONE", "TASK_ASSIGN", "ORDER_SHIP", "ORDER_DELIVER", "ACCOUNT_PAYOUT",
        "ACCOUNT_PAYIN",
    ]  # fmt: skip
    assert (tmp_path / "data" / "archive" / "ord-5001.json").exists()


def test_token_is_signed_with_the_configured_secret(tmp_path: Path) -> None:
    """`hub token TENANT --role ROLE` prints an HS256 token the hub accepts; bad input is 2."""
    out = run_hub("token", "bab-hara", "--role", "restaurant", data=tmp_path)
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.strip(), SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == ("bab-hara", "restaurant")
    assert run_hub("token", "Not_A_Tenant", "--role", "customer", data=tmp_path).returncode == 2


def test_secret_is_generated_once_into_the_data_dir(tmp_path: Path) -> None:
    """Without HUB_SECRET the secret is generated once into $HUB_DATA_DIR/secret (0600)."""
    env = {k: v for k, v in os.environ.items() if k != "HUB_SECRET"}
    cmd = [sys.executable, "-m", "hub", "token", "ali", "--role", "customer"]
    env["HUB_DATA_DIR"] = str(tmp_path)
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    secret = (tmp_path / "secret").read_text().strip()
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    for out in (first, second):
        jwt.decode(out.stdout.strip(), secret, algorithms=["HS256"])


def test_serve_listens_on_PORT_when_no_port_is_given(tmp_path: Path) -> None:
    """`hub serve` without --port serves on $PORT (Railway, Heroku)."""
    import time

    import httpx

    port = free_port()
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path), "HUB_SECRET": SECRET, "PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "hub", "serve", "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout(15)
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code
            except httpx.HTTPError:
                time.sleep(0.05)
        assert status == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=timeout(20))
    assert "Traceback" not in err.decode()
