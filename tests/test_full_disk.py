"""A full disk under the tenant and public DBs: clean 503s, no tracebacks, nothing half-written.

The data dir is a real tmpfs of a few MiB (mounted by the test: CI runs as root), filled with
a file until the kernel answers ENOSPC, while a real ``hub serve`` runs on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import HubProcess, auth, timeout
from tests.test_orders import order_body, run_seed

ALI = auth("ali", "customer")
RAMI = auth("rami", "driver")
PLATFORM = auth("ops", "platform")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted at the end."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail("this test mounts a tmpfs: run it as root (CI does)")
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Write zeros until the filesystem is full; returns the filler (delete it to free space)."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="No space left") as full:  # noqa: PT012 (until full)
            while True:
                os.write(fd, chunk)
    finally:
        os.close(fd)
    assert full.value.errno == errno.ENOSPC, full.value
    return filler


@pytest.fixture
def hub_on(tmp_path: Path) -> Iterator[Callable[[Path], HubProcess]]:
    """A hub whose data dir is given and whose log is kept off that disk."""
    started: list[HubProcess] = []

    def make(data: Path) -> HubProcess:
        hub = HubProcess(data)
        hub.log_path = tmp_path / "hub.log"
        started.append(hub.start())
        return hub

    yield make
    for hub in started:
        if hub.proc is not None and hub.proc.poll() is None:
            hub.stop()


def test_order_steps_and_driver_writes_answer_503_on_a_full_disk(
    small_disk: Path, hub_on: Callable[[Path], HubProcess]
) -> None:
    """Orders, motion and driver status answer 503 `unavailable` (not 500) with no traceback,
    write nothing, /healthz says `failing` (503), and all is well again once space is freed."""
    data = small_disk / "data"
    run_seed(data)
    hub = hub_on(data)
    with httpx.Client(base_url=hub.url, timeout=timeout(30), trust_env=False) as c:
        filler = fill(small_disk)
        answers = {
            "order": c.post("/api/orders", json=order_body("ord-full-1"), headers=ALI),
            "motion": c.post("/api/motion", json={"lat": 25.08, "lng": 55.14}, headers=RAMI),
            "status": c.post("/api/drivers/status", json={"status": "offline"}, headers=RAMI),
        }
        for what, r in answers.items():
            assert r.status_code == 503, (what, r.status_code, r.text)
            assert r.json()["error"]["code"] in {"unavailable", "db_unavailable"}, (what, r.text)
        assert c.get("/api/orders/ord-full-1", headers=ALI).status_code in (403, 404)
        # The streams DB may still have room in its WAL: write until it has none.
        refused = None
        for i in range(200):
            r = c.post(f"/api/streams/full-{i}/events", headers=PLATFORM,
                       json={"opcode": 102, "payload": {"pad": "x" * 60_000}})
            if r.status_code != 201:
                refused = r
                break
        assert refused is not None, "the streams DB took 200 events of 60 KB on a full disk"
        assert refused.status_code == 503, refused.text
        # Health sees databases that cannot write, and shows no internal error text.
        health = c.get("/healthz")
        assert health.status_code == 503, health.text
        assert health.json() == {"status": "failing", "checks": {
            "streams_db": "failing", "broker": "ok", "tenant_dbs": "failing",
            "public_db": health.json()["checks"]["public_db"]}}, health.text
        filler.unlink()
        with contextlib.suppress(FileNotFoundError):
            (small_disk / "filler").unlink()
        r = c.post("/api/orders", json=order_body("ord-full-2"), headers=ALI)
        assert r.status_code == 201, r.text
        assert c.post("/api/drivers/status", json={"status": "offline"},
                      headers=RAMI).status_code == 200
        health = c.get("/healthz")
        assert health.json()["checks"] == {"streams_db": "ok", "broker": "ok",
                                           "tenant_dbs": "ok", "public_db": "ok"}, health.text
    assert "Traceback" not in hub.log(), hub.log()[-3000:]
