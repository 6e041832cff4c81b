"""`make install DESTDIR=...` produces the expected tree, the installed daemon runs, and the
systemd unit passes `systemd-analyze verify` and stays well hardened."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    root = tmp_path_factory.mktemp("destdir")
    (root / "etc" / "nomyo").mkdir(parents=True)
    (root / "etc" / "nomyo" / "config.yaml").write_text("endpoints: [http://10.1.2.3:11434]\n")
    subprocess.run(["make", "-s", "install", f"DESTDIR={root}"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    return root


def test_tree(staged):
    expected = [
        "opt/nomyo-router/bin/nomyo-router", "opt/nomyo-router/bin/python", "usr/local/bin/nomyo-router",
        "etc/nomyo/config.yaml", "lib/systemd/system/nomyo-router.service",
        "usr/local/share/man/man8/nomyo-router.8", "usr/local/share/doc/nomyo-router/README.md",
        "usr/local/share/doc/nomyo-router/operations.md", "usr/local/share/doc/nomyo-router/api.md",
        "opt/nomyo-router/share/nomyo-router/dashboard/index.html",
        "opt/nomyo-router/share/nomyo-router/dashboard/dashboard.js",
    ]
    missing = [path for path in expected if not (staged / path).exists()]
    assert missing == []
    # an existing configuration is never overwritten
    assert (staged / "etc/nomyo/config.yaml").read_text() == "endpoints: [http://10.1.2.3:11434]\n"
    wrapper = (staged / "usr/local/bin/nomyo-router").read_text()
    assert "exec /opt/nomyo-router/bin/python -m nomyo" in wrapper


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
