"""The demo project is safe by default: DEBUG only when asked for, and no start without a
secret key of its own when DEBUG is off."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from botproject.apps import require_secret_key

from .servers import REPO, WEBHOOK_PATH, server_argv, server_env, start_process, start_server

NO_KEY = "DJANGO_SECRET_KEY is not set. With DEBUG off the demo needs a secret key of its own"


def demo_settings(**environ: str) -> dict[str, Any]:
    """DEBUG and SECRET_KEY of botproject.settings read in a fresh interpreter."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **environ}
    code = "import botproject.settings as s; print(repr((s.DEBUG, s.SECRET_KEY)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    debug, key = eval(done.stdout)
    return {"DEBUG": debug, "SECRET_KEY": key}


def test_debug_is_off_unless_asked_for() -> None:
    assert demo_settings() == {"DEBUG": False, "SECRET_KEY": ""}
    assert demo_settings(DJANGO_DEBUG="0")["DEBUG"] is False
    assert demo_settings(DJANGO_DEBUG="1")["DEBUG"] is True
    assert demo_settings(DJANGO_DEBUG="1")["SECRET_KEY"].startswith("django-insecure-")
    assert demo_settings(DJANGO_SECRET_KEY="mine") == {"DEBUG": False, "SECRET_KEY": "mine"}


def test_no_secret_key_with_debug_off_is_refused() -> None:
    with (
        override_settings(DEBUG=False, SECRET_KEY=""),
        pytest.raises(ImproperlyConfigured, match=NO_KEY),
    ):
        require_secret_key()
    with override_settings(DEBUG=False, SECRET_KEY="a key"):
        require_secret_key()
    with override_settings(DEBUG=True, SECRET_KEY=""):
        require_secret_key()


@pytest.mark.slow
def test_a_server_without_a_secret_key_does_not_start(api: Any) -> None:
    """Served by gunicorn, as the problem was found: it stops at start-up and says why."""
    env = server_env(api_base_url=api.base_url, database="sqlite:///unused.sqlite3")
    del env["DJANGO_SECRET_KEY"]
    command = start_process("manage", [sys.executable, "manage.py", "check"], env)
    assert command.wait(60) == 1
    assert NO_KEY in command.log()
    command.stop()
    server = start_process("gunicorn", server_argv("gunicorn", 0, 1), env)
    try:
        assert server.wait(60) != 0
        assert NO_KEY in server.log()
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_missing_page_is_a_plain_404_without_debug(api: Any) -> None:
    """DEBUG off by default: Django's debug page, which lists the URLs, is never shown."""
    env = server_env(api_base_url=api.base_url)
    del env["DJANGO_DEBUG"]
    with start_server("gunicorn", env) as server:
        response = server.request("GET", "/no-such-page/")
        assert response.status_code == 404
        assert WEBHOOK_PATH.strip("/") not in response.text
        assert "DEBUG = True" not in response.text
