"""``store.batch()``: writes collected, then applied and logged at once."""

from __future__ import annotations

from typing import Any, Callable, Optional

from ._types import Offsets
from .errors import StoreClosedError

# commit(staging, offsets, consume) -> (last LSN or None, skipped)
Commit = Callable[[Any, Optional[Offsets], bool], tuple[Optional[int], bool]]


class Batch:
    """Writes collected by ``store.batch()``, applied and logged at exit as one frame.

    Key, value and delta type errors raise at the call; an ``incr`` that does
    not apply raises at exit, and then nothing of the batch is applied.
    An exception inside the ``with`` block discards the batch. ``lsn`` is the
    batch's last LSN after the block (None if nothing was written);
    ``skipped`` is True for a ``store.consume`` batch whose offset another
    batch recorded first.
    """

    __slots__ = ("_staging", "_commit", "_writable", "_offsets", "_consume", "lsn", "skipped",
                 "_done", "put", "delete", "incr", "clear")

    def __init__(self, staging: Any, commit: Commit, writable: Callable[[], None],
                 offsets: Optional[Offsets] = None, consume: bool = False) -> None:
        """(Made by ``store.batch()`` and ``store.consume()``: ``staging``
        is the core's Staging, ``commit`` the store's, ``writable`` raises
        when the store takes no writes.)"""
        self._staging = staging
        self._commit = commit
        self._writable = writable
        self._offsets = offsets
        self._consume = consume
        self.lsn: Optional[int] = None
        self.skipped = False
        self._done = False
        # Bound straight to the core's staging methods: no Python frame per op.
        self.put: Callable[..., None] = staging.put
        self.delete: Callable[..., None] = staging.delete
        self.incr: Callable[..., None] = staging.incr
        self.clear: Callable[..., None] = staging.clear

    def __len__(self) -> int:
        return len(self._staging)

    def __enter__(self) -> Batch:
        if self._done:
            raise StoreClosedError("a batch can be used once")
        self._writable()
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Any) -> None:
        self._done = True
        # Writes after the block would never be committed: refuse them loudly.
        self.put = self.delete = self.incr = self.clear = _batch_is_over
        if exc_type is None:
            # A commit that raises before applying anything (an aborted wait
            # for admission, intake.Aborted) leaves the staging as it was:
            # calling __exit__ again commits it then (rehydrate.aio does).
            self.lsn, self.skipped = self._commit(self._staging, self._offsets, self._consume)


def _batch_is_over(*args: Any, **kwargs: Any) -> None:
    raise StoreClosedError("this batch has ended; start a new store.batch()")
