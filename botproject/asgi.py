"""ASGI entry point (uvicorn): the async webhook view, a database connection pool on
PostgreSQL.

The webhook's body limit is enforced before Django reads the body (see botsessions.asgi).
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botproject.settings")
os.environ["BOTPROJECT_ASGI"] = "1"  # urls.py mounts the async webhook view
django_application = get_asgi_application()

from botsessions.asgi import WebhookBodyLimit  # noqa: E402  (needs Django set up first)

application = WebhookBodyLimit(django_application)
