"""Retention for the ingress's Maildir: remove the files of messages analysed long ago.

The ingress keeps each accepted message in its Maildir until the analysis is stored;
from then on the file is only evidence, and a Maildir receiving a copy of all mail
fills its disk. :func:`prune` removes the files of messages analysed more than a given
age ago and empties their records' path. A message whose analysis is not stored yet
is never touched, however old; nor is a file outside the Maildir, whatever a record
says (the run stops there). A redelivered or replayed ``ingest`` of a pruned message
finds it analysed and does nothing (:func:`.tasks.ingest`).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from .files import moved_in_maildir
from .store import ResultStore

__all__ = ["OutsideMaildirError", "prune"]

#: Records read per query.
BATCH = 500


class OutsideMaildirError(Exception):
    """A record of the store points at a file outside the Maildir being pruned."""


def prune(store: ResultStore, maildir: Path, older_than_s: float,
          now: float | None = None) -> int:
    """Remove the files of messages analysed over ``older_than_s`` seconds ago.

    A batch's files are removed before their records forget them (one statement): a
    crash in between leaves records whose file is gone, which the next run forgets.
    Returns the files removed.

    Raises:
        OutsideMaildirError: a record points outside ``maildir`` (nothing of it touched).
    """
    root = maildir.resolve()
    before = (time.time() if now is None else now) - older_than_s
    removed = 0
    while rows := store.analysed_files(before, BATCH):
        gone: list[str] = []
        try:
            for key, recorded in rows:
                path = Path(recorded)
                # The ingress writes below its Maildir: a record pointing elsewhere means
                # another Maildir was named (or the record is not the ingress's); it is
                # left as it is. (A link is removed, never what it points to.)
                if not path.parent.resolve().is_relative_to(root):
                    raise OutsideMaildirError(
                        f"a message file is recorded outside {root} (after {removed} "
                        "removed): name the ingress's --maildir")
                # A mail client may have moved it from new/ to cur/ (it saw the message).
                for candidate in (path, moved_in_maildir(path)):
                    if candidate is not None:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(candidate)
                            removed += 1
                            break
                gone.append(key)
        finally:
            store.forget_files(gone)
    return removed
