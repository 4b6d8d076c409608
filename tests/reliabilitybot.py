"""Test-only variants of the demo bot, named by dotted path in ``BOTSESSIONS_BOTS``.

The demo bot itself never changes; these factories build it and swap its sessions
configuration, so the reliability tests can run the very same handlers:

- :func:`build_application` reads ``BOTSESSIONS_TEST_LOCKING`` (``0`` turns locks and
  revision checks off) so server processes can run the race the locks prevent, and
  ``BOTSESSIONS_TEST_HOLDS`` (``1``: two users' updates stop the process where a crash
  hurts most, see :func:`_install_holds`);
- :func:`build_versioned_application` adds a data migration to the chat fragment that
  raises for rows marked ``{"broken": true}``: a stored row that cannot be upgraded, on
  every database (PostgreSQL's ``jsonb`` cannot hold undecodable text).
"""

from __future__ import annotations

import os
import time
from typing import Any

from telegram import Update
from telegram.ext import CommandHandler

from botproject import bot
from botsessions import Fragment, SessionContext, Sessions, per_chat
from botsessions.ptb import SessionApplication
from botsessions.runner import BotRunner
from botsessions.storage.db import DatabaseStorage

LOCKING_ENV = "BOTSESSIONS_TEST_LOCKING"
HOLD_ENV = "BOTSESSIONS_TEST_HOLDS"
# With holds on, updates from these users stop the process where a crash hurts most.
PAUSE_AFTER_COMMIT_USER = 4_000_000_001
HOLD_IN_TRANSACTION_USER = 4_000_000_002


def build_application() -> SessionApplication:
    """The demo bot; without locking when ``BOTSESSIONS_TEST_LOCKING=0``."""
    application = bot.build_application()
    assert isinstance(application, SessionApplication)
    if os.environ.get(LOCKING_ENV, "1") == "0":
        application.sessions = Sessions.multi(
            locking=False, migrate_chats=True, **bot.sessions.fragments
        )
    if os.environ.get(HOLD_ENV) == "1":
        _install_holds(application)
    application.add_handler(CommandHandler("buyfail", buy_then_fail))
    return application


async def buy_then_fail(update: Update, context: SessionContext) -> None:
    """The demo's /buy, then a failure: nothing of it may be kept, nothing sent."""
    await bot.buy(update, context)
    raise RuntimeError("the card was declined")


def _to_v2(data: Any) -> Any:
    if data.get("broken"):
        raise ValueError("this row cannot be upgraded")
    return {**data, "upgraded": True}


def build_versioned_application() -> SessionApplication:
    """The demo bot whose chat fragment is at data version 2."""
    application = bot.build_application()
    assert isinstance(application, SessionApplication)
    fragments = dict(bot.sessions.fragments)
    fragments["chat"] = Fragment(
        initial=lambda: {"pizza_count": 0},
        key=per_chat,
        migrations={1: lambda data: data, 2: _to_v2},
    )
    application.sessions = Sessions.multi(migrate_chats=True, **fragments)
    return application


def _install_holds(application: SessionApplication) -> None:
    """Stop for good (until killed) right after a commit, or inside an open transaction.

    Each stop prints a line first, so that the test knows where the process is.
    """
    process = BotRunner.process

    def process_then_pause(runner: BotRunner, update: Any) -> str:
        outcome = process(runner, update)  # committed once this returns
        if getattr(update.effective_user, "id", None) == PAUSE_AFTER_COMMIT_USER:
            print(f"HOLD committed {update.update_id}, not answering", flush=True)
            time.sleep(600)
        return outcome

    apply = DatabaseStorage._apply

    def apply_then_hold(
        storage: DatabaseStorage, connection: Any, cursor: Any, change: Any, now: Any
    ) -> None:
        apply(storage, connection, cursor, change, now)
        if change.key.key == f"user:{HOLD_IN_TRANSACTION_USER}":
            print("HOLD inside an open transaction", flush=True)
            time.sleep(600)

    BotRunner.process = process_then_pause  # type: ignore[method-assign]
    DatabaseStorage._apply = apply_then_hold  # type: ignore[method-assign]
