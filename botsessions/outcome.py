"""How an update ended: what the webhook answers with, and what decides the commit."""

from __future__ import annotations


class Outcome:
    """The outcomes of an update, as the webhook reports them (``{"outcome": ...}``)."""

    COMMITTED = "committed"  # handlers ran; what they changed (sessions, rows) is stored
    UNCHANGED = "unchanged"  # handlers ran and changed nothing: not even recorded
    SKIPPED = "skipped"  # no handler wanted the update
    DUPLICATE = "duplicate"  # it was committed before; handlers did not run again
    HANDLER_FAILED = "handler_failed"  # a handler raised; everything it wrote discarded
    BAD_STORED_DATA = "bad_stored_data"  # a stored row could not be read; row untouched

    #: The outcomes that keep what the update wrote; the others roll it back.
    COMMITTING = frozenset((COMMITTED, UNCHANGED, SKIPPED))
