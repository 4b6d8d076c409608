"""A measuring process, driven by bench.run: ``python -m bench.worker``.

It configures Django with bench.settings (the ``DATABASE_URL`` and ``BENCH_BOT`` of its
environment) against a fake Bot API of its own, then answers commands: one JSON object
a line on stdin, one JSON line (after ``ANSWER``) on stdout. It keeps its bot between
commands, so that bench.run can interleave variants, repetition after repetition,
without starting them anew. Commands: ``migrate``, ``fill``, ``warmup``, ``run``,
``statements`` and ``profile``.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from . import updates

ANSWER = "ANSWER "
BOT_ID = 123456  # the id in bench.settings' token "123456:BENCH"
PLAIN = "plain"  # BENCH_BOT of the baseline: the plain Application (bench.bots.PlainRunner)


class Worker:
    """The commands, with the bot this process measures."""

    def __init__(self) -> None:
        self._runner: Any = None

    @property
    def runner(self) -> Any:
        if self._runner is None:
            if os.environ.get("BENCH_BOT") == PLAIN:
                from .bots import PlainRunner, plain_application

                self._runner = PlainRunner(plain_application())
            else:
                from botsessions.runner import runner_for

                self._runner = runner_for("default")
                self._runner.initialize()
        return self._runner

    def migrate(self) -> dict[str, Any]:
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        return {}

    def warmup(self, chats: int, first_update_id: int) -> dict[str, Any]:
        """One 🍕 per chat: every session row exists afterwards, caches are warm."""
        runner = self.runner
        for data in updates.warmup(chats, first_update_id):
            runner.process(runner.decode(data))
        return {}

    def run(self, count: int, chats: int, seed: int, first_update_id: int) -> dict[str, Any]:
        """Time ``count`` updates of the mix through decode + process."""
        from .bots import measure

        work = updates.workload(count, chats, seed, first_update_id)
        gc.collect()
        result = measure(self.runner, work)
        expected = updates.expected_outcomes(work)
        with_sessions = os.environ.get("BENCH_BOT") in ("sessions", "redis", "ptb")
        if with_sessions and result["outcomes"] != expected:
            raise RuntimeError(f"outcomes {result['outcomes']}, expected {expected}")
        return result

    def fill(self, rows: int) -> dict[str, Any]:
        """Add filler sessions (other chats of the bot) until ``rows`` rows are stored."""
        from django.db import connection, transaction

        from botsessions.models import Session

        started = time.perf_counter()
        kind = "CASE WHEN i %% 2 = 1 THEN 'chat' ELSE 'user' END"
        missing = rows - Session.objects.count()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(  # rows 0 to missing - 1 (one row when nothing is missing)
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < %s) "
                "INSERT INTO botsessions_session (bot_id, fragment, key, data, revision, "
                f"created_at, updated_at) SELECT %s, {kind}, {kind} || ':' || "
                "CAST(%s + i / 2 AS TEXT), '{\"n\":1}', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP "
                "FROM n WHERE %s > 0",
                [missing, BOT_ID, updates.FILLER_BASE, missing],
            )
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        return {"rows": Session.objects.count(), "seconds": time.perf_counter() - started}

    def statements(self, chats: int, first_update_id: int) -> dict[str, Any]:
        """What one update of each kind sends to the database, as the driver saw it."""
        from botsessions.runner import BotRunner

        from .bots import sessions_off_application

        ids = iter(range(first_update_id, first_update_id + 1000))
        chat = updates.chat_id(chats + 7)  # after the measured chats: new to the database
        runner, off = self.runner, BotRunner(sessions_off_application())

        def text(kind: str, target: int = chat) -> dict[str, Any]:
            return updates.message(target, next(ids), updates.TEXTS[kind])

        runner.process(runner.decode(text("pizza")))  # the chat's rows exist from here on
        again = text("text")
        runner.process(runner.decode(again))
        edited = updates.message(chat, next(ids), updates.TEXTS["edited"], edited=True)
        hunger = updates.message(chat, next(ids), "/hunger")
        cases = [
            ("no handler matched (an edited message)", runner, edited),
            ("session read, unchanged (/hunger)", runner, hunger),
            ("one fragment changed (text)", runner, text("text")),
            ("two fragments changed (🍕 text)", runner, text("pizza")),
            ("first message of a new chat", runner, text("text", updates.chat_id(chats + 8))),
            ("redelivered (already committed)", runner, again),
            ("sessions off: BotRunner alone", off, text("text")),
        ]
        from .profile import DatabaseWatch

        found = {}
        with DatabaseWatch().installed() as watch:
            for name, case_runner, data in cases:
                update = case_runner.decode(data)
                watch.take()
                found[name] = {"outcome": case_runner.process(update), **watch.take()}
        off.shutdown()
        return found

    def profile(self, **spec: Any) -> dict[str, Any]:
        from .profile import profile

        return profile(**spec)


def main() -> int:
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    from tests.fakebotapi import FakeBotAPI

    with FakeBotAPI() as api:
        os.environ["TELEGRAM_API_BASE_URL"] = api.base_url
        import django

        django.setup()
        warnings.filterwarnings("ignore", module="telegram")
        worker = Worker()
        for line in sys.stdin:
            command = json.loads(line)
            handler: Callable[..., dict[str, Any]] = getattr(worker, command.pop("command"))
            print(ANSWER + json.dumps(handler(**command)), flush=True)
        if worker._runner is not None:
            worker._runner.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
