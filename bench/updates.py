"""The updates the benchmark sends, shaped like Telegram's, reproducible from a seed.

The mix is 70% plain text (the sender's message count changes: one fragment written),
20% text with a 🍕 (the chat's pizza count changes too: two fragments written) and 10%
edited messages, which no handler of the demo takes (nothing is read or written). No
update in the mix makes the bot reply, so no Bot API call is timed. Chats are private
chats, so a chat's id is its user's id: 1,000 chats are 2,000 session rows.
"""

from __future__ import annotations

import random
from typing import Any

CHAT_BASE = 1_000_000_000
# Session keys of filler rows (growth) start here, far from any measured chat.
FILLER_BASE = 5_000_000_000
MIX = {"text": 0.70, "pizza": 0.20, "edited": 0.10}
MIX_TEXT = "70% text, 20% 🍕 text, 10% edited messages (no handler); no replies"
TEXTS = {"text": "see you at eight", "pizza": "one more 🍕 please", "edited": "see you at nine"}
DATE = 1763740800


def chat_id(index: int) -> int:
    """The id of measured chat number ``index``."""
    return CHAT_BASE + index


def message(
    chat: int, update_id: int, text: str, *, edited: bool = False, message_id: int = 1
) -> dict[str, Any]:
    """A private-chat text message (or its edit); a leading "/" makes it a command."""
    body: dict[str, Any] = {
        "message_id": message_id,
        "date": DATE,
        "chat": {"id": chat, "type": "private", "first_name": "Bench"},
        "from": {"id": chat, "is_bot": False, "first_name": "Bench"},
        "text": text,
    }
    if text.startswith("/"):
        body["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    if edited:
        body["edit_date"] = DATE + 60
        return {"update_id": update_id, "edited_message": body}
    return {"update_id": update_id, "message": body}


def workload(count: int, chats: int, seed: int, first_update_id: int) -> list[dict[str, Any]]:
    """``count`` updates of the mix, each for a chat drawn at random among ``chats``."""
    rng = random.Random(seed)
    kinds = rng.choices(list(MIX), list(MIX.values()), k=count)
    return [
        message(
            chat_id(rng.randrange(chats)),
            first_update_id + offset,
            TEXTS[kind],
            edited=kind == "edited",
            message_id=offset + 1,
        )
        for offset, kind in enumerate(kinds)
    ]


def warmup(chats: int, first_update_id: int) -> list[dict[str, Any]]:
    """One 🍕 message per chat: every session row exists afterwards, caches are warm."""
    return [message(chat_id(i), first_update_id + i, TEXTS["pizza"]) for i in range(chats)]


def expected_outcomes(work: list[dict[str, Any]]) -> dict[str, int]:
    """What the demo must answer: every message committed, every edit skipped."""
    edits = sum("edited_message" in update for update in work)
    return {key: n for key, n in (("committed", len(work) - edits), ("skipped", edits)) if n}
