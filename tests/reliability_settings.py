"""The demo project serving :func:`tests.reliabilitybot.build_application`.

Server processes started with ``DJANGO_SETTINGS_MODULE=tests.reliability_settings`` run
the demo bot's handlers with the locking that ``BOTSESSIONS_TEST_LOCKING`` asks for
(see :mod:`tests.reliabilitybot`).
"""

from __future__ import annotations

from botproject.settings import *  # noqa: F403
from botproject.settings import BOTSESSIONS_BOTS as _DEMO_BOTS
from botproject.settings import DATABASES

# Persistent connections, as a production server keeps them: a new connection per request
# costs 50 ms on some MariaDB servers, which would dominate these runs.
if "pool" not in DATABASES["default"]["OPTIONS"]:  # a pool keeps its connections itself
    DATABASES["default"]["CONN_MAX_AGE"] = 60

BOTSESSIONS_BOTS = {
    "default": {**_DEMO_BOTS["default"], "APPLICATION": "tests.reliabilitybot.build_application"}
}
