"""Keeping bot tokens out of everything botsessions writes or raises.

A bot token is the bot's password. PTB's messages can hold it (``InvalidToken`` names the
refused token), and Bot API URLs embed it, so every log line, command output and
exception text that could reach a page or a terminal goes through :func:`redact`.
"""

from __future__ import annotations


def redact(text: str, token: str | None) -> str:
    """``text`` with ``token`` (and its secret half alone) replaced by a placeholder."""
    if not token:
        return text
    text = text.replace(token, "<token>")
    _, _, secret = token.partition(":")
    return text.replace(secret, "<token>") if len(secret) >= 8 else text
