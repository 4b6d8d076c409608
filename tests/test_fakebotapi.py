"""Tests for the fake Bot API, driven by a real PTB Bot so the fake stays wire-compatible.

Coroutines are run with asyncio.run() so these tests need no pytest-asyncio configuration.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Message, User
from telegram.error import BadRequest, EndPointNotFound, InvalidToken, NetworkError, RetryAfter

from tests.fakebotapi import Call, FakeBotAPI, UploadedFile

TOKEN = "123456:TEST"


@pytest.fixture
def api() -> Iterator[FakeBotAPI]:
    with FakeBotAPI() as fake:
        yield fake


def _bot(api: FakeBotAPI, token: str = TOKEN) -> Bot:
    return Bot(token=token, base_url=api.base_url, base_file_url=api.base_file_url)


def _post_json(url: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_urls_point_at_local_server(api: FakeBotAPI) -> None:
    assert api.base_url == f"http://127.0.0.1:{api.port}/bot"
    assert api.base_file_url == f"http://127.0.0.1:{api.port}/file/bot"


def test_get_me_uses_bot_id_from_token(api: FakeBotAPI) -> None:
    async def scenario() -> User:
        async with _bot(api) as bot:
            return await bot.get_me()

    me = asyncio.run(scenario())
    assert me.id == 123456
    assert me.is_bot
    assert me.username == "pizza_test_bot"
    assert me.first_name == "Pizza Bot"
    # `async with bot` calls getMe on initialize, then the test calls it again.
    assert [call.method for call in api.calls] == ["getMe", "getMe"]
    assert api.calls[0].token == TOKEN


def test_send_message_records_params_and_returns_message(api: FakeBotAPI) -> None:
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("Margherita", callback_data="pick:1")]])

    async def scenario() -> tuple[Message, Message]:
        async with _bot(api) as bot:
            first = await bot.send_message(chat_id=42, text="Hello", reply_markup=markup)
            second = await bot.send_message(chat_id=-1001234, text="Group hello")
            return first, second

    first, second = asyncio.run(scenario())

    assert api.sent_texts() == ["Hello", "Group hello"]
    call = api.calls_to("sendMessage")[0]
    # Scalars stay form strings; PTB's JSON-encoded objects are decoded.
    assert call.params["chat_id"] == "42"
    assert call.params["reply_markup"] == {
        "inline_keyboard": [[{"text": "Margherita", "callback_data": "pick:1"}]]
    }

    assert first.text == "Hello"
    assert first.chat.id == 42
    assert first.chat.type == "private"
    assert first.from_user is not None
    assert first.from_user.id == 123456
    assert first.reply_markup == markup
    assert abs(first.date.timestamp() - time.time()) < 60
    assert second.message_id == first.message_id + 1
    assert second.chat.type == "supergroup"


def test_webhook_round_trip(api: FakeBotAPI) -> None:
    async def scenario() -> tuple[Any, Any]:
        async with _bot(api) as bot:
            assert await bot.set_webhook(
                "https://example.com/hook",
                secret_token="s3cret",
                allowed_updates=["message", "callback_query"],
            )
            info = await bot.get_webhook_info()
            assert await bot.delete_webhook()
            return info, await bot.get_webhook_info()

    info, cleared = asyncio.run(scenario())
    assert info.url == "https://example.com/hook"
    assert info.allowed_updates == ("message", "callback_query")
    assert info.pending_update_count == 0
    assert api.calls_to("setWebhook")[0].params["secret_token"] == "s3cret"
    assert cleared.url == ""
    assert api.webhook == {}


def test_get_updates_honours_offset_and_limit(api: FakeBotAPI) -> None:
    api.queue_message("/start", chat_id=42)
    api.queue_message("hi", chat_id=42)
    api.queue_update({"update_id": 10, "message": api.queue_message("x")["message"]})

    async def scenario() -> list[list[int]]:
        async with _bot(api) as bot:
            first = await bot.get_updates(timeout=0, limit=2)
            confirmed = await bot.get_updates(offset=first[-1].update_id + 1, timeout=0)
            drained = await bot.get_updates(offset=11, timeout=0)
            return [[u.update_id for u in batch] for batch in (first, confirmed, drained)]

    first, confirmed, drained = asyncio.run(scenario())
    assert first == [1, 2]
    assert confirmed == [3, 10]
    assert drained == []
    assert api.pending_updates() == []


def test_queued_command_parses_as_command(api: FakeBotAPI) -> None:
    api.queue_message("/start pizza", chat_id=7)

    async def scenario() -> Message | None:
        async with _bot(api) as bot:
            (update,) = await bot.get_updates(timeout=0)
            return update.message

    message = asyncio.run(scenario())
    assert message is not None
    assert message.text == "/start pizza"
    assert message.from_user is not None
    assert message.from_user.id == 7
    assert message.entities[0].type == "bot_command"


def test_long_poll_returns_update_queued_while_waiting(api: FakeBotAPI) -> None:
    timer = threading.Timer(0.2, api.queue_message, args=("late",))

    async def scenario() -> tuple[list[str | None], float]:
        async with _bot(api) as bot:
            timer.start()
            started = time.monotonic()
            updates = await bot.get_updates(timeout=30)
            return [u.message.text if u.message else None for u in updates], (
                time.monotonic() - started
            )

    texts, elapsed = asyncio.run(scenario())
    timer.join()
    assert texts == ["late"]
    assert elapsed < 1.0


def test_long_poll_timeout_is_capped(api: FakeBotAPI) -> None:
    async def scenario() -> float:
        async with _bot(api) as bot:
            started = time.monotonic()
            assert await bot.get_updates(timeout=30) == ()
            return time.monotonic() - started

    assert 0.9 <= asyncio.run(scenario()) < 3.0


def test_unknown_method_and_bad_token_raise(api: FakeBotAPI) -> None:
    async def unknown_method() -> None:
        async with _bot(api) as bot:
            await bot.do_api_request("noSuchMethod")

    async def bad_token() -> None:
        async with _bot(api, token="not-a-token") as bot:
            await bot.get_me()

    with pytest.raises(EndPointNotFound):
        asyncio.run(unknown_method())
    with pytest.raises(InvalidToken):
        asyncio.run(bad_token())
    assert api.calls[-1] == Call("getMe", "not-a-token", {})


# PTB warns about RetryAfter.retry_after's future type change while building its message.
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
def test_fail_next_only_affects_one_call(api: FakeBotAPI) -> None:
    api.fail_next("sendMessage", 400, "Bad Request: chat not found")
    api.fail_next("sendMessage", 429, retry_after=3)
    api.fail_next("sendMessage")

    async def scenario() -> Message:
        async with _bot(api) as bot:
            with pytest.raises(BadRequest, match=r"(?i)chat not found"):
                await bot.send_message(1, "a")
            with pytest.raises(RetryAfter):
                await bot.send_message(1, "b")
            with pytest.raises(NetworkError, match="Internal Server Error"):
                await bot.send_message(1, "c")
            return await bot.send_message(1, "d")

    assert asyncio.run(scenario()).text == "d"
    assert api.sent_texts() == ["a", "b", "c", "d"]


def test_multipart_upload_is_parsed(api: FakeBotAPI) -> None:
    content = bytes(range(256)) * 4

    def document_message(call: Call) -> dict[str, Any]:
        return {
            "message_id": 1,
            "date": int(time.time()),
            "chat": {"id": 5, "type": "private"},
            "document": {"file_id": "f1", "file_unique_id": "u1"},
        }

    api.set_result("sendDocument", document_message)

    async def scenario() -> Message:
        async with _bot(api) as bot:
            return await bot.send_document(5, content, filename="menu.bin", caption="menü")

    message = asyncio.run(scenario())
    assert message.document is not None
    params = api.calls_to("sendDocument")[0].params
    assert params["chat_id"] == "5"
    assert params["caption"] == "menü"
    document = params["document"]
    assert isinstance(document, UploadedFile)
    assert document.filename == "menu.bin"
    assert document.data == content


def test_json_body_and_wait_for(api: FakeBotAPI) -> None:
    def later() -> None:
        time.sleep(0.1)
        _post_json(f"{api.base_url}{TOKEN}/sendMessage", {"chat_id": 9, "text": "json"})

    thread = threading.Thread(target=later)
    thread.start()
    (call,) = api.wait_for("sendMessage", timeout=5)
    thread.join()
    assert call.params == {"chat_id": 9, "text": "json"}

    api.reset()
    assert api.calls == []
    with pytest.raises(AssertionError, match="expected 1 call"):
        api.wait_for("sendMessage", timeout=0.1)


def test_stop_closes_socket() -> None:
    api = FakeBotAPI().start()
    url = f"{api.base_url}{TOKEN}/getMe"
    status, body = _post_json(url, {})
    assert (status, body["ok"]) == (200, True)
    api.stop()
    api.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_the_server_prints_one_whole_line_per_call_however_many_come_at_once() -> None:
    """What a demo (or anyone counting replies in its output) reads: calls from many
    threads never share a line."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from tests.servers import REPO, free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "fakebotapi.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        url = f"http://127.0.0.1:{port}/bot{TOKEN}/sendMessage"
        with ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(
                    lambda n: _post_json(url, {"chat_id": n, "text": f"reply {n}"}), range(1, 301)
                )
            )
        assert all(status == 200 for status, _ in answers)
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    calls = [line for line in output.splitlines() if "sendMessage" in line]
    assert len(calls) == 300 and all(line.count("sendMessage") == 1 for line in calls)
