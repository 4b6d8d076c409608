"""The pytest plugin of botsessions: a ``bot_client`` fixture.

Installed with the package and loaded by pytest through its ``pytest11`` entry point, so
it is imported in every pytest run, Django project or not: it imports nothing of
Django's or of the app's until a test asks for the fixture. ``-p no:botsessions``
turns it off.

``bot_client`` is a :class:`botsessions.testing.BotClient` for the bot ``default``,
closed after the test. It uses pytest-django's ``db`` fixture, so a test needs no
marker; with ``@pytest.mark.django_db(transaction=True)`` it runs in a transactional
test. Answer a Bot API method with a result of your own with ``bot_client.answer``::

    def test_admins_only(bot_client):
        bot_client.answer("getChatMember", {"status": "administrator", ...})
        assert bot_client.send("/ban", chat_id=-5, user_id=1).texts == ["Banned."]

For another bot, use ``BotClient("alias")`` in a ``with`` block.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .testing import BotClient


@pytest.fixture
def bot_client(db: None) -> Iterator[BotClient]:
    """A :class:`~botsessions.testing.BotClient` for the bot ``default``."""
    from .testing import BotClient

    with BotClient() as client:
        yield client
