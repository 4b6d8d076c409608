"""The demo project's app: its ``Purchase`` model, and a start-up check of its settings."""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class BotProjectConfig(AppConfig):
    name = "botproject"

    def ready(self) -> None:
        require_secret_key()


def require_secret_key() -> None:
    """Refuse to start with DEBUG off and no secret key, saying what to set.

    Checked as the project starts (``manage.py``, gunicorn, uvicorn), not as a system
    check, which servers never run. Without it Django would start and fail at the first
    request that signs something (an admin login), far from the cause.
    """
    if settings.DEBUG:
        return  # botproject/settings.py then falls back to a development key
    try:
        key = settings.SECRET_KEY
    except ImproperlyConfigured:  # Django's own complaint about an empty key
        key = ""
    if not key:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. With DEBUG off the demo needs a secret key of "
            "its own: export DJANGO_SECRET_KEY=\"$(python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(50))')\", or set DJANGO_DEBUG=1 for local "
            "development (scripts/demo.sh does)."
        )
