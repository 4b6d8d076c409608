"""``bash scripts/demo.sh`` as the README tells a newcomer to run it, without a bot token.

The virtualenv step is given a ready environment (this interpreter) so the test does not
install packages; everything after it runs for real: migrate, the admin user, the fake
Bot API, runserver, and the clean-up on Ctrl-C.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest

from .servers import REPO, free_port, start_process
from .updates import message

pytestmark = pytest.mark.slow


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_script_serves_admin_and_webhook(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    digest = hashlib.sha256((REPO / "requirements.txt").read_bytes()).hexdigest()
    (venv / ".requirements.sha256").write_text(digest + "\n")
    port, fake_port = free_port(), free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "BOTSESSIONS_VENV": str(venv),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "PORT": str(port),
        "FAKE_API_PORT": str(fake_port),
    }
    demo = start_process("demo", ["bash", "scripts/demo.sh"], env, ready="Quit the server")
    try:
        log = demo.log()
        assert "Created the demo superuser admin / admin" in log
        assert f"using the FAKE Bot API at http://127.0.0.1:{fake_port}/bot" in log
        assert "X-Telegram-Bot-Api-Secret-Token: demo-secret" in log

        url = f"http://127.0.0.1:{port}"
        admin = httpx.get(f"{url}/admin/")
        assert (admin.status_code, admin.headers["location"]) == (
            302,
            "/admin/login/?next=/admin/",
        )
        assert "Django administration" in httpx.get(f"{url}/admin/login/").text
        headers = {"X-Telegram-Bot-Api-Secret-Token": "demo-secret"}
        webhook = f"{url}/telegram/webhook/"
        assert httpx.post(webhook, json=message("🍕"), headers=headers).json()["ok"] is True
        assert httpx.post(webhook, json=message("/hunger"), headers=headers).status_code == 200
        demo.wait_for_log(r"sendMessage .*Your hunger level is 1!")
        assert httpx.post(webhook, json=message("🍕")).status_code == 403

        demo.signal_group(signal.SIGINT)  # Ctrl-C in the terminal
        demo.wait(15)
        assert not listening(fake_port), "the fake Bot API outlived the script"
        assert not listening(port)
        demo.stop(signal.SIGKILL, timeout=5)

        # A second run on the same database keeps the admin user and says so.
        demo = start_process("demo", ["bash", "scripts/demo.sh"], env, ready="Quit the server")
        assert "An admin user exists already" in demo.log()
    finally:
        demo.stop(signal.SIGKILL, timeout=5)
