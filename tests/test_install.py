"""`make install DESTDIR=...` produces the expected tree, the installed daemon runs, and the
systemd unit passes `systemd-analyze verify` and stays well hardened.

The install runs from a copy of the checkout (its tracked and untracked files, as a fresh clone
with local changes), so the test can see that it leaves nothing behind there (no build/, no
*.egg-info), with PREFIX=/usr so the man page and unit are seen to follow PREFIX.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def copy_checkout(target: Path) -> Path:
    """The checkout's files as git sees them (tracked, and untracked but not ignored)."""

    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = Path(REPO) / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return copy_checkout(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def staged(tmp_path_factory, checkout):
    root = tmp_path_factory.mktemp("destdir")
    (root / "etc" / "nomyo").mkdir(parents=True)
    (root / "etc" / "nomyo" / "config.yaml").write_text("endpoints: [http://10.1.2.3:11434]\n")
    subprocess.run(["make", "-s", "install", f"DESTDIR={root}", "PREFIX=/usr"], cwd=checkout, check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    return root


def test_tree(staged, checkout):
    expected = [
        "opt/nomyo-router/bin/nomyo-router", "opt/nomyo-router/bin/python", "usr/bin/nomyo-router",
        "etc/nomyo/config.yaml", "lib/systemd/system/nomyo-router.service",
        "usr/share/man/man8/nomyo-router.8", "usr/share/doc/nomyo-router/README.md",
        "usr/share/doc/nomyo-router/operations.md", "usr/share/doc/nomyo-router/api.md",
        "opt/nomyo-router/share/nomyo-router/dashboard/index.html",
        "opt/nomyo-router/share/nomyo-router/dashboard/dashboard.js",
    ]
    missing = [path for path in expected if not (staged / path).exists()]
    assert missing == []
    # an existing configuration is never overwritten
    assert (staged / "etc/nomyo/config.yaml").read_text() == "endpoints: [http://10.1.2.3:11434]\n"
    wrapper = (staged / "usr/bin/nomyo-router").read_text()
    assert "exec /opt/nomyo-router/bin/python -m nomyo" in wrapper
    # nothing built in the checkout (as root it would be root-owned and in the way of the user)
    assert sorted(p.name for p in checkout.iterdir() if p.name == "build" or p.name.endswith(".egg-info")) == []


def test_venv_uses_the_system_python(staged):
    """By default the service's venv links to /usr/bin/python3, which its DynamicUser can reach."""

    config = (staged / "opt/nomyo-router/pyvenv.cfg").read_text()
    assert re.search(r"^home = /usr/bin$", config, re.MULTILINE), config
    assert os.path.realpath(staged / "opt/nomyo-router/bin/python").startswith("/usr/")


def test_man_page_follows_prefix_and_documents_exits_and_environment(staged):
    page = (staged / "usr/share/man/man8/nomyo-router.8").read_text()
    assert "/usr/share/doc/nomyo-router/" in page and "/usr/local" not in page
    unit = (staged / "lib/systemd/system/nomyo-router.service").read_text()
    assert "file:///usr/share/doc/nomyo-router/README.md" in unit
    section = page[page.index(".SH EXIT STATUS"):page.index(".SH ENVIRONMENT")]
    assert re.findall(r"^\.B (\d+)$", section, re.MULTILINE) == ["0", "1", "2"]
    environment = page[page.index(".SH ENVIRONMENT"):page.index(".SH FILES")]
    read = set()
    for source in Path(REPO, "nomyo").rglob("*.py"):
        read |= set(re.findall(r"environ\.get\(\"([A-Z_]+)\"", source.read_text()))
    assert read >= {"NOMYO_ROUTER_CONFIG", "NOMYO_ROUTER_DB_PATH", "NOTIFY_SOCKET"}
    assert sorted(name for name in read if name not in environment) == []


@pytest.mark.parametrize("python", ["/root/.pyenv/versions/3.11.7/bin/python3", "/home/someone/.venv/bin/python",
                                    sys.executable])
def test_install_refuses_an_interpreter_under_root_or_home(python, tmp_path, checkout):
    """A venv linked to a Python under /root or /home would not start under the unit's
    DynamicUser with ProtectHome=yes: make install says so and installs nothing."""

    real = os.path.realpath(python)
    if python == sys.executable and not real.startswith(("/root/", "/home/")):
        pytest.skip(f"this test's own Python ({real}) is outside /root and /home")
    done = subprocess.run(["make", "-s", "install", f"DESTDIR={tmp_path}", f"INSTALL_PYTHON={python}"],
                          cwd=checkout, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"INSTALL_PYTHON={python}" in done.stderr and "is under /root or /home" in done.stderr
    assert "INSTALL_PYTHON=/usr/bin/python3" in done.stderr  # what to do instead
    assert list(tmp_path.iterdir()) == []


def test_installed_daemon_runs(staged):
    launcher = staged / "opt/nomyo-router/bin/nomyo-router"
    version = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("nomyo-router ")
    check = subprocess.run([launcher, "--check-config", staged / "etc/nomyo/config.yaml"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    # the installed copy of the package, not the checkout, is what runs
    where = subprocess.run([staged / "opt/nomyo-router/bin/python", "-c", "import nomyo; print(nomyo.__file__)"],
                           capture_output=True, text=True, cwd="/", timeout=60)
    assert where.stdout.startswith(str(staged / "opt/nomyo-router"))
    # ... and it finds its dashboard in the venv's prefix
    found = subprocess.run([staged / "opt/nomyo-router/bin/python", "-c",
                            "from nomyo.dashboard import find_dashboard; print(find_dashboard())"],
                           capture_output=True, text=True, cwd="/", timeout=60)
    assert found.stdout.strip() == str(staged / "opt/nomyo-router/share/nomyo-router/dashboard")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verifies_and_is_hardened(staged, tmp_path):
    unit = (staged / "lib/systemd/system/nomyo-router.service").read_text()
    assert "Type=notify" in unit and "ExecReload=/opt/nomyo-router/bin/nomyo-router --check-config" in unit
    # verify resolves ExecStart on this machine's root: point it at the staged venv
    local = tmp_path / "nomyo-router.service"
    local.write_text(unit.replace("/opt/nomyo-router", str(staged / "opt/nomyo-router")))
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", local], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", local],
                              capture_output=True, text=True)
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout).group(1))
    assert score < 2.0
