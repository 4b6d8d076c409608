"""Long polling that tells Telegram an update was received only once it is processed.

Telegram forgets an update when a ``getUpdates`` call asks for a later offset. PTB's
Updater makes that call as soon as it has queued a batch, before the batch is processed,
and once more when it stops, before the application processes what is left: a process
killed meanwhile (SIGKILL, the OOM killer, a container's stop timeout) loses the batch,
and so does a stop that cannot store an update. ``runbot`` gives its Updater a
:class:`ConfirmingBot` instead, so that nothing is confirmed before it is processed. An
update that is delivered again after it was processed (the process died before the next
``getUpdates``) is skipped if it was recorded: if it changed a session or wrote rows.
"""

from __future__ import annotations

import logging
from typing import Any

from telegram import Bot, Update
from telegram.error import TelegramError
from telegram.ext import Application

logger = logging.getLogger("botsessions.polling")


class ConfirmingBot:
    """The bot as runbot's Updater sees it: ``getUpdates`` confirms processed updates only.

    - A poll first waits until every update fetched before it has been processed (PTB
      marks each one done on the update queue once its handlers have run, or failed), so
      its offset confirms only those. Fetching and processing no longer overlap: that is
      one Bot API round trip per batch of up to 100 updates. Not with
      ``concurrent_updates``, where one update may wait for another that only a later
      batch brings: polls then confirm as PTB's do, when they fetch.
    - The call PTB makes as it stops confirms up to the first update not processed yet;
      :meth:`confirm_processed`, once the application has stopped, those it processed
      after that call.

    An update the stop gives up on (:meth:`finished` not called) stays unconfirmed, and
    Telegram delivers it again on the next start. Every other attribute is the bot's.
    """

    def __init__(self, bot: Bot, application: Application) -> None:  # type: ignore[type-arg]
        self._bot = bot
        self._application = application
        #: Fetched and not processed yet.
        self._unfinished: set[int] = set()
        #: The offset just past the last update fetched.
        self._fetched_to = 0
        #: The highest offset sent to Telegram.
        self._confirmed_to = 0

    def __getattr__(self, name: str) -> Any:
        if name == "_bot":  # not set yet (a copy being made): no endless lookup
            raise AttributeError(name)
        return getattr(self._bot, name)

    def __repr__(self) -> str:
        return repr(self._bot)

    def finished(self, update: object) -> None:
        """``update`` has been processed (committed, or its handlers failed): confirm it."""
        if isinstance(update, Update):
            self._unfinished.discard(update.update_id)

    def processed_to(self) -> int:
        """The offset that confirms every processed update and no other."""
        return min(self._unfinished, default=self._fetched_to)

    async def get_updates(
        self, offset: int | None = None, *args: Any, **kwargs: Any
    ) -> tuple[Update, ...]:
        updater = self._application.updater
        polling = updater is not None and updater.running
        waits = not polling or self._application.concurrent_updates <= 1
        if polling and waits:
            await self._application.update_queue.join()
        if waits and offset is not None:
            # As it stops, PTB's offset is past updates still queued; while polling, it is
            # past an update only if the update was given up on, never if it is processed.
            offset = min(offset, self.processed_to())
        updates = await self._bot.get_updates(offset, *args, **kwargs)
        self._confirmed_to = max(self._confirmed_to, offset or 0)
        if polling and updates:
            # Unfinished until processed, including a batch PTB drops as it stops:
            # Telegram then delivers it again on the next start.
            self._unfinished.update(update.update_id for update in updates)
            self._fetched_to = max(self._fetched_to, updates[-1].update_id + 1)
        return updates

    async def confirm_processed(self) -> None:
        """Confirm what was processed since the last ``getUpdates`` (the stop's updates)."""
        offset = self.processed_to()
        if offset <= self._confirmed_to:
            return
        try:
            await self._bot.get_updates(offset=offset, limit=1, timeout=0)
        except TelegramError as exc:
            logger.warning(
                "could not confirm the updates processed while stopping (%s): Telegram "
                "delivers them again on the next start, and those recorded are skipped",
                exc,
            )
            return
        self._confirmed_to = offset


def confirm_when_processed(application: Application) -> ConfirmingBot:  # type: ignore[type-arg]
    """Give ``application``'s Updater a :class:`ConfirmingBot`, and confirm at its stop."""
    updater = application.updater
    assert updater is not None
    confirming = ConfirmingBot(updater.bot, application)
    updater.bot = confirming  # type: ignore[assignment]
    stop = application.stop

    async def stop_then_confirm() -> None:
        try:
            await stop()
        finally:
            await confirming.confirm_processed()

    # Application instances of botsessions have a __dict__: this shadows the method for
    # runbot's application only, which PTB's run_polling then stops.
    application.stop = stop_then_confirm  # type: ignore[method-assign]
    return confirming
