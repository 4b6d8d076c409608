"""Settings for the test suite: the demo project, on the database DATABASE_URL names.

SQLite (the default) uses a file, not memory, so that server processes started by the
end-to-end tests see the same test database as the test process.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from botproject.settings import *  # noqa: F403
from botproject.settings import database_from_url

_TEST_DIR = Path(os.environ.get("BOTSESSIONS_TEST_DIR") or tempfile.gettempdir())

DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL") or f"sqlite:///{_TEST_DIR / 'botsessions-dev.sqlite3'}"
    )
}
# One test database per test process, so that concurrent runs never share one.
if str(DATABASES["default"]["ENGINE"]).endswith("sqlite3"):
    DATABASES["default"]["TEST"] = {
        "NAME": str(_TEST_DIR / f"botsessions-test-{os.getpid()}.sqlite3")
    }
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
# A second database, for writes outside the sessions' one (only the tests that ask for it
# get a test database of it).
DATABASES["elsewhere"] = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": str(_TEST_DIR / "botsessions-elsewhere.sqlite3"),
    "TEST": {"NAME": str(_TEST_DIR / f"botsessions-elsewhere-test-{os.getpid()}.sqlite3")},
}

SECRET_KEY = "tests-only-secret-key"
DEBUG = False
ALLOWED_HOSTS = ["*"]
TELEGRAM_BOT_TOKEN = "123456:TEST-token"
TELEGRAM_API_BASE_URL = ""
REDIS_URL = ""  # the demo's sessions in the database, whatever the environment says
BOTSESSIONS_BOTS = {
    "default": {
        "APPLICATION": "botproject.bot.build_application",
        "WEBHOOK_SECRET": "test-secret",
    }
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING = {"version": 1, "disable_existing_loggers": False}
