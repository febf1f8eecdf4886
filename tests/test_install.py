"""A wheel install serves the web UI (docs/protocol.md §9): the wheel is built from a copy of
the source (pip wheel), installed into a fresh venv, and its `hub demo`, started from an empty
directory, serves every page of hub/static/.

Offline: the wheel is built without build isolation when the running environment can
(setuptools with bdist_wheel), else pip fetches the build backend from the package index;
the fresh venv is given the running environment's packages (a .pth line) for the hub's
dependencies, so only the hub itself comes from the wheel.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, timeout

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "hub" / "static"
PAGES = ["/", "/customer.html", "/kitchen.html", "/driver.html", "/hub-client.js",
         "/hub-constants.js"]  # fmt: skip


def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        seconds: float = 120) -> str:  # fmt: skip
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout(seconds), check=False)  # fmt: skip
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def can_build_offline() -> bool:
    """setuptools can make a wheel here without fetching anything (bdist_wheel is built into
    setuptools 70.1 and later, and comes from the wheel package before that)."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    if importlib.util.find_spec("wheel") is not None:
        return True
    from importlib.metadata import version

    major, minor = (int(p) for p in version("setuptools").split(".")[:2])
    return (major, minor) >= (70, 1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hub's wheel, built from a copy of the tree (a build writes into its source dir)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "hub", src / "hub", ignore=shutil.ignore_patterns("__pycache__"))
    isolation = ["--no-build-isolation", "--no-index"] if can_build_offline() else []
    run(sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
        *isolation, "-w", work / "dist", src)  # fmt: skip
    (found,) = (work / "dist").glob("hub_streams-*.whl")
    return found


def test_the_wheel_holds_the_web_ui(wheel: Path) -> None:
    """Every file of hub/static/ is in the wheel, under the distribution name hub-streams."""
    names = set(zipfile.ZipFile(wheel).namelist())
    static = {f"hub/static/{p.name}" for p in STATIC.iterdir() if p.is_file()}
    assert static, "hub/static/ is empty"
    assert static <= names, sorted(static - names)
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)


def test_an_installed_wheel_serves_every_page(wheel: Path, tmp_path: Path) -> None:
    """Installed into a fresh venv, `hub demo` run from an empty directory serves the web UI
    from the installed package (not from this checkout)."""
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
        "--no-index", "--disable-pip-version-check", wheel)  # fmt: skip
    # The hub's dependencies: the running environment's packages, after the venv's own (a
    # plain path line: that environment's .pth files, e.g. an editable hub, are not read).
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .strip())  # fmt: skip
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_hub_test_dependencies.pth").write_text("\n".join(sorted(here)) + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HUB_", "PYTHON", "VIRTUAL_ENV")) and k != "PORT"}  # fmt: skip
    where = run(python, "-c", "import hub, hub.edge.app as a; print(hub.__file__);"
                " print(a.STATIC_DIR)", cwd=empty, env=env)  # fmt: skip
    module, static_dir = where.split()
    assert Path(module).is_relative_to(venv), module
    assert Path(static_dir).is_relative_to(venv), static_dir
    version = run(venv / "bin" / "hub", "--version", cwd=empty, env=env)
    assert version.startswith("hub "), version

    port = free_port()
    log = (tmp_path / "demo.log").open("wb")
    proc = subprocess.Popen([venv / "bin" / "hub", "demo", "--port", str(port)], cwd=empty,
                            env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    log.close()
    pages = PAGES + [f"/{p.name}" for p in sorted(STATIC.iterdir())
                     if p.is_file() and p.suffix in {".html", ".js", ".css"}]  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout(30)
        while True:
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "demo.log").read_text()
            time.sleep(0.1)
        for page in dict.fromkeys(pages):
            r = httpx.get(base + page, timeout=timeout(10))
            assert r.status_code == 200, (page, r.status_code)
            name = "index.html" if page == "/" else page[1:]
            assert r.content == (STATIC / name).read_bytes(), page
    finally:
        proc.terminate()
        proc.wait(timeout(20))
    printed = (tmp_path / "demo.log").read_text()
    assert "/customer.html#token=" in printed, printed
    assert (empty / "data").is_dir()  # the demo's embedded databases, in the empty directory
