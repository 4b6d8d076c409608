from __future__ import annotations

import pytest
from telegram.ext import CommandHandler, MessageHandler, filters

from botsessions import Sessions
from botsessions.models import Session

from .sql import locked, statements
from .updates import message

pytestmark = pytest.mark.django_db


def test_counter_round_trip(make_bot):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    async def count(update, context):
        context.session["n"] += 1

    async def show(update, context):
        await update.message.reply_text(f"n={context.session['n']}")

    bot = make_bot(
        Sessions(initial=lambda: {"n": 0}),
        [CommandHandler("show", show), MessageHandler(filters.TEXT & ~filters.COMMAND, count)],
    )
    assert bot.process(message("hi")) == "committed"
    assert bot.process(message("hi")) == "committed"
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(message("/show")) == "unchanged"
    assert statements(captured) == locked("SELECT")
    row = Session.objects.get()
    assert row.data == {"n": 2}
    assert row.key == "chat:111111111"
