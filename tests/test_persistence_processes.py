"""DjangoPersistence across server processes and restarts, through the webhook.

The bot of :mod:`tests.persistencebot` is written for PTB's own persistence (chat_data,
user_data, bot_data, a persistent ConversationHandler); its persistence line changed, and
its replies go out after the commit (``context.on_commit``). Two server processes
(uvicorn's async view and gunicorn's sync one) serve it on the test database: a
conversation hops between them and survives a restart, and messages sent to both at
once are all counted.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from botsessions.models import Session

from .fakebotapi import FakeBotAPI
from .servers import Server, server_env, start_runbot, start_server, wait_until
from .test_reliability_processes import deliver
from .updates import ALICE, BOB, message

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

GROUP_CHAT = -4000000500


def env(api: FakeBotAPI) -> dict[str, str]:
    return server_env(
        api_base_url=api.base_url, DJANGO_SETTINGS_MODULE="tests.persistence_settings"
    )


@pytest.fixture
def two_servers(api: FakeBotAPI) -> Iterator[list[Server]]:
    with start_server("uvicorn", env(api)) as first, start_server("gunicorn", env(api)) as second:
        yield [first, second]


def send(server: Server, text: str, **ids: Any) -> str:
    response = server.post_update(message(text, **ids))
    assert response.status_code == 200, response.text
    return str(response.json()["outcome"])


def test_a_conversation_hops_between_processes_and_survives_a_restart(
    two_servers: list[Server], api: FakeBotAPI
) -> None:
    first, second = two_servers
    api.reset()
    assert send(first, "/checkout", chat_id=ALICE, user_id=ALICE) == "committed"
    assert send(second, "pizza", chat_id=ALICE, user_id=ALICE) == "committed"
    for server in two_servers:
        server.stop()
    with start_server("gunicorn", env(api)) as restarted:
        assert send(restarted, "Main Street 1", chat_id=ALICE, user_id=ALICE) == "committed"
        # The conversation ended: a text is counted, not taken as an address.
        assert send(restarted, "thanks", chat_id=ALICE, user_id=ALICE) == "committed"
        # Its reply goes out after the commit, so the update is recorded: committed.
        assert send(restarted, "/stats", chat_id=ALICE, user_id=ALICE) == "committed"
    assert api.sent_texts() == [
        "What would you like?",
        "Where to?",
        "pizza to Main Street 1, order 1.",
        "3 messages here, 1 orders in all.",
    ]
    assert not Session.objects.filter(fragment="ptb.conversation.checkout").exists()


def test_two_processes_lose_no_write_to_chat_data_user_data_or_bot_data(
    two_servers: list[Server], api: FakeBotAPI
) -> None:
    """Two users order in one group, step by step, while 60 messages go to the group
    through both processes at once: every message is counted in chat_data, and both
    orders are in bot_data (a conflicting write to it is refused and redelivered). Each
    reply goes out once, though an update may run twice: the bot replies on commit."""
    # Other users' chatter: the conversations are per user and chat.
    texts = [message("hi", chat_id=GROUP_CHAT, user_id=7000 + n % 3) for n in range(60)]
    steps = {
        user: [message(t, chat_id=GROUP_CHAT, user_id=user) for t in ("/checkout", "tea", "Home")]
        for user in (ALICE, BOB)
    }

    def converse(user: int) -> None:
        for n, update in enumerate(steps[user]):
            deliver([two_servers[(n + user) % 2]], update)

    with ThreadPoolExecutor(8) as pool:
        done = [pool.submit(converse, user) for user in (ALICE, BOB)]
        list(pool.map(lambda update: deliver(two_servers, update), texts))
        for future in done:
            future.result()
    assert Counter(api.sent_texts()) == {
        "What would you like?": 2,
        "Where to?": 2,
        "tea to Home, order 1.": 2,
    }
    api.reset()
    deliver(two_servers, message("/stats", chat_id=GROUP_CHAT, user_id=ALICE))
    # 60 texts, plus the two item and two address steps, which group 1 counts too.
    assert api.sent_texts() == ["64 messages here, 2 orders in all."]
    for user in (ALICE, BOB):
        row = Session.objects.get(fragment="ptb.user_data", key=f"user:{user}")
        assert row.data == {"item": "tea", "orders": 1}


def test_runbot_polls_as_ptb_does_and_the_webhook_takes_over(api: FakeBotAPI) -> None:
    """The same conversation under ``runbot`` (PTB's own polling), then the webhook."""
    bot = start_runbot(env(api))
    try:
        api.queue_update(message("/checkout", chat_id=BOB, user_id=BOB))
        api.queue_update(message("cake", chat_id=BOB, user_id=BOB))
        wait_until(
            lambda: (
                Session.objects.filter(fragment="ptb.conversation.checkout").exists()
                and api.sent_texts()[-1:] == ["Where to?"]
            ),
            20,
            "two steps by polling",
        )
        assert bot.stop(signal.SIGINT, timeout=20) == 0
        assert "Traceback" not in bot.log()
    finally:
        bot.stop(signal.SIGKILL, timeout=5)
    with start_server("gunicorn", env(api)) as server:
        assert send(server, "Park Lane", chat_id=BOB, user_id=BOB) == "committed"
    assert api.sent_texts()[-1] == "cake to Park Lane, order 1."
