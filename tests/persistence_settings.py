"""The demo project serving :func:`tests.persistencebot.build_application`."""

from __future__ import annotations

from botproject.settings import *  # noqa: F403
from botproject.settings import BOTSESSIONS_BOTS as _DEMO_BOTS
from botproject.settings import DATABASES

if "pool" not in DATABASES["default"]["OPTIONS"]:  # a pool keeps its connections itself
    DATABASES["default"]["CONN_MAX_AGE"] = 60

BOTSESSIONS_BOTS = {
    "default": {**_DEMO_BOTS["default"], "APPLICATION": "tests.persistencebot.build_application"}
}
