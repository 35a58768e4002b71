"""The asyncio API (docs/asyncio.md): ``import rehydrate.aio as rha``.

``await rha.open(path, ...)`` and ``await rha.open_background(path, ...)``
give an ``AsyncStore``, a thin async surface on a ``Store`` whose writes
never block the event loop:

- a write that need not wait runs on the loop itself (a memory write under
  the store's lock, as ``Store.put`` is) and returns its LSN;
- what would block after it (the fsync of ``sync="always"``, the write of a
  full buffer) runs on the store's durability thread, one for all writes, in
  order, so one fsync covers every write that came before it (group
  commit), and the write's coroutine waits for it there;
- a write that must wait for admission (a background open that has not
  found the log's end, a full intake, an incr on a table still loading, a
  handoff's hold) goes to the store's writer threads with an abort token
  (intake.Abort).

Cancellation: a write cancelled while it waits for admission is aborted
there and never applied; one already handed to the log is completed (made
durable as the sync mode says) before the caller sees CancelledError.
Reads stay synchronous: they are memory reads.

Imported only on demand: ``import rehydrate`` does not load it (nor asyncio).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional, TypeVar, Union

from . import intake as _intake
from ._types import Key, Number, Offsets, StrPath, Value
from .batch import Batch
from .errors import ConfigError, StoreClosedError
from .gates import Gate, Requirement
from .options import DEFAULT_MIGRATION_MAX_DUTY, DEFAULT_MIGRATION_SLICE_MS
from .recovery import RecoveryReport
from .store import Store

if TYPE_CHECKING:
    from . import observe

__all__ = ["AsyncBatch", "AsyncStore", "open", "open_background", "DEFAULT_WRITER_THREADS"]

T = TypeVar("T")

#: Threads of one store that run writes held for admission (each such write
#: holds one while it waits; more wait in line, cancellable there).
DEFAULT_WRITER_THREADS = 16
#: Keys read per step of ``AsyncStore.items`` before it yields to the loop.
DEFAULT_CHUNK_KEYS = 1000
# How often a thread waiting for readiness looks whether its caller is gone.
_WAIT_SLICE_S = 0.25
_MISSING = object()


# ----------------------------------------------------------------- opening
async def open(path: StrPath, **options: Any) -> AsyncStore:
    """``Store.open(path, **options)`` on a thread of its own; the loop runs
    on meanwhile. The same options and errors as ``Store.open``. Cancelled,
    the open goes on on its thread and the store is closed once it is open
    (its directory unlocked)."""
    return AsyncStore(await _open_on_thread(Store.open, path, options))


async def open_background(path: StrPath, **options: Any) -> AsyncStore:
    """``Store.open_background(path, **options)`` (docs/warmup.md) on a
    thread: returns once writes may be sent (they wait for admission without
    blocking the loop); ``await store.wait_ready()`` waits for the state."""
    return AsyncStore(await _open_on_thread(Store.open_background, path, options))


async def _open_on_thread(opener: Callable[..., Store], path: StrPath,
                          options: dict[str, Any]) -> Store:
    future = _on_thread(f"rehydrate-aio-open:{path}", opener, path, **options)
    try:
        return await asyncio.shield(asyncio.wrap_future(future))
    except asyncio.CancelledError:
        future.add_done_callback(_close_unwanted)
        raise


def _close_unwanted(future: concurrent.futures.Future[Store]) -> None:
    """An open whose caller was cancelled: close the store it made."""
    if future.exception() is None:
        future.result().close()


def _on_thread(name: str, fn: Callable[..., T], *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[T]:
    """``fn(*args, **kwargs)`` on a new daemon thread: for the rare long
    calls (open, close, checkpoint, digest, a key listing, a readiness wait),
    which so never wait in line behind held writes."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()

    def run() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            future.set_exception(e)
        else:
            future.set_result(result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


async def _until_done(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` to end, whatever more cancellations come: a write
    handed to the log is seen to its end before its caller is told."""
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            continue
        except BaseException:  # noqa: BLE001 - the outcome is read by the caller
            break
    if not future.cancelled():
        future.exception()  # (retrieved: no "never retrieved" warning)


# ------------------------------------------------------------------- store
class AsyncStore:
    """A ``Store`` with async writes: ``AsyncStore(store)`` wraps one you
    have (``rha.open`` / ``rha.open_background`` make one); ``.store`` is
    the ``Store``. Writes return what ``Store``'s return (LSNs); reads are
    the store's own, synchronous. ``writer_threads``: threads that run
    writes held for admission (module docstring, docs/asyncio.md).
    """

    def __init__(self, store: Store, *, writer_threads: int = DEFAULT_WRITER_THREADS) -> None:
        if not isinstance(store, Store):
            raise ConfigError(f"AsyncStore wraps a rehydrate.Store, not {type(store).__name__}")
        if type(writer_threads) is not int or writer_threads < 1:
            raise ConfigError(f"writer_threads must be an int >= 1, not {writer_threads!r}")
        self._store = store
        self._writer_threads = writer_threads
        self._pools_lock = threading.Lock()
        self._writers: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._durability: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._pools_closed = False

    @property
    def store(self) -> Store:
        """The wrapped ``Store``."""
        return self._store

    # ------------------------------------------------------------ threads
    def _pool(self, durability: bool) -> concurrent.futures.ThreadPoolExecutor:
        """The writer threads, or the durability thread (one: its fsyncs
        come in order, each covering every write before it); made on first
        use. StoreClosedError once ``close()`` let them go."""
        pool = self._durability if durability else self._writers
        if pool is not None:
            return pool
        with self._pools_lock:
            if self._pools_closed:
                raise StoreClosedError("store is closed", path=self._store.path)
            if durability:
                if self._durability is None:
                    self._durability = concurrent.futures.ThreadPoolExecutor(
                        1, thread_name_prefix=f"rehydrate-aio-sync:{self._store.path}")
                return self._durability
            if self._writers is None:
                self._writers = concurrent.futures.ThreadPoolExecutor(
                    self._writer_threads,
                    thread_name_prefix=f"rehydrate-aio-write:{self._store.path}")
            return self._writers

    def _submit(self, durability: bool, fn: Callable[..., T],
                *args: Any) -> concurrent.futures.Future[T]:
        try:
            return self._pool(durability).submit(fn, *args)
        except RuntimeError as e:  # (shut down between the check and the submit)
            raise StoreClosedError("store is closed", path=self._store.path) from e

    async def _call_on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """A call that is no write (nothing to protect): cancelled, its
        caller leaves at once and the thread finishes on its own."""
        return await asyncio.wrap_future(_on_thread(f"rehydrate-aio:{self._store.path}",
                                                    fn, *args))

    # ------------------------------------------------------------- writes
    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the store's write call ``fn(*args)`` without blocking the loop."""
        context = _intake.WriteContext(_intake.NEVER_WAIT, defer_durability=True)
        try:
            result = _intake.call_with(context, fn, *args)
        except _intake.Aborted:
            # It would have waited for admission; nothing was applied.
            return await self._write_held(fn, args)
        durable = context.deferred
        if durable is not None:
            await self._made_durable(durable)
        return result

    async def _made_durable(self, durable: Callable[[], None]) -> None:
        """Run a write's durability step on the durability thread. The write
        is applied: cancelled, the step still ends before CancelledError."""
        try:
            future = self._submit(True, durable)
        except StoreClosedError:
            # close() let the threads go after its own flush and fsync,
            # which covered this write (applied before the store closed).
            return
        waited = asyncio.wrap_future(future)
        try:
            await asyncio.shield(waited)
        except asyncio.CancelledError:
            await _until_done(waited)
            raise

    async def _write_held(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """A write that waits for admission, on a writer thread, abortable."""
        abort = _intake.Abort()
        future = self._submit(False, _intake.call_with, _intake.WriteContext(abort), fn, *args)
        waited = asyncio.wrap_future(future)
        try:
            return await asyncio.shield(waited)
        except asyncio.CancelledError:
            if not future.cancel():  # (cancelled while in line: never started)
                # On its thread: it leaves its wait with Aborted (nothing
                # applied), or it was past it and completes, durable as the
                # sync mode says. Either way its end comes first.
                abort.abort()
                await _until_done(waited)
            raise

    async def put(self, table: str, key: Key, value: Value) -> int:
        """``Store.put``: the write's LSN, once admitted (and, under
        ``sync="always"``, durable)."""
        return await self._write(self._store.put, table, key, value)

    async def delete(self, table: str, key: Key) -> int:
        """``Store.delete``."""
        return await self._write(self._store.delete, table, key)

    async def incr(self, table: str, key: Key, delta: Number = 1,
                   column: Optional[str] = None) -> int:
        """``Store.incr`` (during a background open it waits for its
        table's state, off the loop)."""
        return await self._write(self._store.incr, table, key, delta, column)

    async def write(self, table: str, op: str, key: Optional[Key] = None,
                    value: Value = None) -> int:
        """``Store.write``: a custom table's op."""
        return await self._write(self._store.write, table, op, key, value)

    async def clear(self, table: str) -> int:
        """``Store.clear``."""
        return await self._write(self._store.clear, table)

    def batch(self, offsets: Optional[Offsets] = None) -> AsyncBatch:
        """``async with astore.batch() as b: b.put(...)``: the writes are
        committed together at the block's end, as ``Store.batch``'s are."""
        return AsyncBatch(self, self._store.batch(offsets))

    async def consume(self, source: str, offset: int) -> Optional[AsyncBatch]:
        """``Store.consume``: a batch recording ``offset`` of ``source``, or
        None when the state already includes it."""
        batch = await self._write(self._store.consume, source, offset)
        return None if batch is None else AsyncBatch(self, batch)

    async def sync(self) -> int:
        """Make every earlier write durable; returns the durable LSN (on the
        durability thread, in line with the writes' fsyncs)."""
        return await asyncio.wrap_future(self._submit(True, self._store.sync))

    async def checkpoint(self) -> dict[str, Any]:
        """``Store.checkpoint()``, on a thread."""
        return await self._call_on_thread(self._store.checkpoint)

    async def digest(self) -> int:
        """``Store.digest()``, on a thread (it reads the whole state)."""
        return await self._call_on_thread(self._store.digest)

    # --------------------------------------------------- online migrations
    async def _call_to_end(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A call that changes a run (start, route, abort, cutover), on a
        thread of its own. Cancelled, its caller still waits for its end
        before CancelledError: the call is never left half done (a cutover
        commits whole or not at all), and what it did is then what
        ``migration_status`` says."""
        future = _on_thread(f"rehydrate-aio-migration:{self._store.path}", fn, *args, **kwargs)
        waited = asyncio.wrap_future(future)
        try:
            return await asyncio.shield(waited)
        except asyncio.CancelledError:
            await _until_done(waited)
            raise

    async def start_migration(self, id: str, *,
                              compare: Optional[Callable[[Any, Any], bool]] = None,
                              sample: float = 0.01, auto_revert: Optional[dict[str, Any]] = None,
                              on_restart: str = "rebuild",
                              slice_ms: float = DEFAULT_MIGRATION_SLICE_MS,
                              max_duty: float = DEFAULT_MIGRATION_MAX_DUTY) -> dict[str, Any]:
        """``Store.start_migration`` (docs/migrations.md, "Online
        migrations") on a thread: the run's status. Its build goes on in
        the background; ``on_migration_state`` listeners, or
        ``migration_status``, say when it caught up."""
        return await self._call_to_end(
            self._store.start_migration, id, compare=compare, sample=sample,
            auto_revert=auto_revert, on_restart=on_restart, slice_ms=slice_ms,
            max_duty=max_duty)

    async def route(self, id: str, fraction: float) -> dict[str, Any]:
        """``Store.route``: serve ``fraction`` of the table's reads from
        the shadow; the status."""
        return await self._call_to_end(self._store.route, id, fraction)

    async def abort_migration(self, id: str, reason: str = "aborted") -> dict[str, Any]:
        """``Store.abort_migration``: reads go back to the old table, the
        shadow is dropped; the status."""
        return await self._call_to_end(self._store.abort_migration, id, reason)

    async def complete_migration(self, id: str) -> dict[str, Any]:
        """``Store.complete_migration``: the cutover, on a thread (writes
        sent meanwhile wait for it off the loop); the ledger entry.
        Cancelled, the cutover still ends, committed or not, before
        CancelledError: the table is then at its old version or its new
        one, never between (``migration_status`` says which)."""
        return await self._call_to_end(self._store.complete_migration, id)

    def migration_status(self, id: str) -> dict[str, Any]:
        """``Store.migration_status``: a memory read."""
        return self._store.migration_status(id)

    def migrations_status(self) -> list[dict[str, Any]]:
        """``Store.migrations_status``: a memory read."""
        return self._store.migrations_status()

    # --------------------------------------------------------------- life
    async def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """``Store.wait_ready``: True once the store is open and warm, False
        when ``timeout`` seconds pass first; raises what a background open
        failed with."""
        if self._store.wait_ready(0):
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        gone = threading.Event()  # the caller left (cancelled): stop waiting

        def wait() -> bool:
            while not gone.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if self._store.wait_ready(_WAIT_SLICE_S if left is None
                                          else min(left, _WAIT_SLICE_S)):
                    return True
            return False

        try:
            return await self._call_on_thread(wait)
        finally:
            gone.set()

    async def close(self) -> None:
        """``Store.close()`` on a thread (held writes are refused, what is
        pending written and fsynced, the directory unlocked); then the
        store's threads go. Closing twice is fine."""
        await self._call_on_thread(self._store.close)
        with self._pools_lock:
            self._pools_closed = True
            pools = [p for p in (self._writers, self._durability) if p is not None]
            self._writers = self._durability = None
        for pool in pools:
            pool.shutdown(wait=False)

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, exc_type: Optional[type[BaseException]],
                        exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        await self.close()

    # -------------------------------------------------------------- reads
    async def table_keys(self, name: str) -> list[Any]:
        """``Store.table_keys``: the keys of ``name`` at one moment, listed
        on a thread (the listing holds the store's lock)."""
        return await self._call_on_thread(self._store.table_keys, name)

    async def items(self, name: str,
                    chunk_keys: int = DEFAULT_CHUNK_KEYS) -> AsyncIterator[tuple[Any, Any]]:
        """``async for key, value in astore.items(name)``: the keys of one
        moment (``table_keys``), their values read ``chunk_keys`` at a time,
        yielding to the loop between chunks. A value is the key's value when
        its chunk is read; a key deleted since the listing is skipped.
        KeyError for a table never written."""
        if type(chunk_keys) is not int or chunk_keys < 1:
            raise ConfigError(f"chunk_keys must be an int >= 1, not {chunk_keys!r}")
        keys = await self.table_keys(name)
        table = self._store.table(name)  # (ready: the listing waited for it)
        for start in range(0, len(keys), chunk_keys):
            chunk = [(k, table.get(k, _MISSING)) for k in keys[start:start + chunk_keys]]
            for key, value in chunk:
                if value is not _MISSING:
                    yield key, value
            await asyncio.sleep(0)

    def get(self, table: str, key: Key, default: Any = None) -> Any:
        """The value of ``key`` in ``table``, or ``default`` (also for a table
        never written). A memory read; during a background open, a table
        not yet ready waits for its state (check ``readiness()`` first)."""
        try:
            t = self._store.table(table)
        except KeyError:
            return default
        return t.get(key, default)

    def table(self, name: str) -> Any:
        """``Store.table``: the live read-only mapping."""
        return self._store.table(name)

    def tables(self) -> list[str]:
        """``Store.tables``."""
        return self._store.tables()

    def readiness(self) -> dict[str, Any]:
        """``Store.readiness``."""
        return self._store.readiness()

    def gate(self, name: str,
             requires: Sequence[Union[Requirement, Callable[[Store], object]]]) -> Gate:
        """``Store.gate``: a feature gate; ``bool(gate)`` on the request
        path, ``await gate.wait_async(timeout)`` (docs/warmup.md, "Feature
        gates")."""
        return self._store.gate(name, requires)

    @property
    def lsn(self) -> int:
        """``Store.lsn``: the LSN of the last write logged."""
        return self._store.lsn

    @property
    def durable_lsn(self) -> int:
        """``Store.durable_lsn``."""
        return self._store.durable_lsn

    @property
    def offsets(self) -> Offsets:
        """``Store.offsets`` (during a background open it waits for the
        replay: ``await wait_ready()`` first)."""
        return self._store.offsets

    @property
    def path(self) -> str:
        return self._store.path

    @property
    def sync_mode(self) -> str:
        return self._store.sync_mode

    @property
    def role(self) -> str:
        return self._store.role

    @property
    def closed(self) -> bool:
        return self._store.closed

    @property
    def failed(self) -> bool:
        return self._store.failed

    @property
    def recovery_report(self) -> RecoveryReport:
        return self._store.recovery_report

    @property
    def ledger(self) -> list[dict[str, Any]]:
        return self._store.ledger

    def metrics(self, registry: Any = None) -> Any:
        """``Store.metrics``."""
        return self._store.metrics(registry)

    def asgi_app(self, registry: Any = None) -> observe.AsgiApp:
        """``Store.asgi_app``: ``/readyz``, ``/livez``, ``/metrics`` to mount."""
        return self._store.asgi_app(registry)

    def wsgi_app(self, registry: Any = None) -> observe.WsgiApp:
        """``Store.wsgi_app``."""
        return self._store.wsgi_app(registry)

    def __repr__(self) -> str:
        return f"<rehydrate.aio.AsyncStore of {self._store!r}>"


class AsyncBatch:
    """``astore.batch()``: writes collected with ``put``, ``delete``,
    ``incr`` and ``clear`` (not awaited: they only stage), committed as one
    batch when the ``async with`` block ends (awaited: admission and
    durability as for any write). An exception in the block discards the
    batch. ``lsn`` and ``skipped`` as ``Batch``'s."""

    __slots__ = ("_astore", "_batch")

    def __init__(self, astore: AsyncStore, batch: Batch) -> None:
        self._astore = astore
        self._batch = batch

    @property
    def lsn(self) -> Optional[int]:
        """The batch's last LSN after the block (None if nothing was written)."""
        return self._batch.lsn

    @property
    def skipped(self) -> bool:
        """True for a ``consume`` batch whose offset another batch recorded first."""
        return self._batch.skipped

    def __len__(self) -> int:
        return len(self._batch)

    def put(self, table: str, key: Key, value: Value) -> None:
        self._batch.put(table, key, value)

    def delete(self, table: str, key: Key) -> None:
        self._batch.delete(table, key)

    def incr(self, table: str, key: Key, delta: Number = 1) -> None:
        self._batch.incr(table, key, delta)

    def clear(self, table: str) -> None:
        self._batch.clear(table)

    async def __aenter__(self) -> AsyncBatch:
        self._batch.__enter__()
        return self

    async def __aexit__(self, exc_type: Optional[type[BaseException]],
                        exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if exc_type is not None:
            self._batch.__exit__(exc_type, exc, tb)  # (discarded)
            return
        # Batch.__exit__ commits; aborted before it applied anything, it may
        # be called again (batch.py), which the held path does.
        await self._astore._write(self._batch.__exit__, None, None, None)
