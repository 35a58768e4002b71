"""A store's roles (docs/replication.md): primary, standby, reader and
moved; following a primary (in the same directory or over HTTP), the
primary's side of a handoff (the hold, the fence), and a standby's promote.

``Roles`` sits between ``Lifecycle`` (lifecycle.py: how a store is made,
opened and closed) and ``Store`` (store.py, the surface). It implements the
hooks the workings call: ``_not_primary`` and ``_wait_out_hold`` (a write
that is not a primary's, or that comes during a hold), ``_check_fence``
(the journal's check before each write) and ``_look_for_handoff`` (the
journal flusher's tick). The moving parts are elsewhere: follow.py (the
log follower), standby.py (the follow thread, the receiver, the local
request file), replication.py and replication_client.py (the wire).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from typing import Any, Optional, Self

from . import _fileio
from . import forking as _forking
from . import intake as _intake
from . import manifest as _manifest
from . import opening as _opening
from . import standby as _standby
from ._types import StrPath
from .errors import (
    BackpressureError, HandoffError, LockedError, MovedError, ReadOnlyError, RehydrateError,
    ReplicationError,
)
from .follow import LogFollower
from .lifecycle import Lifecycle
from .lockfile import DirLock
from .recovery import Action, apply_actions

__all__ = ["Roles"]


class Roles(Lifecycle):
    """Roles, following, handoff: the part of a store docs/replication.md
    describes. ``Store`` is its surface."""

    def _not_primary(self) -> RehydrateError:
        if self._moved is not None:  # (moved, or a demoted primary: now a standby)
            moved = self._moved or {}
            to = moved.get("address")
            return MovedError(
                f"this store handed its writes over (epoch {moved.get('epoch')})"
                + (f" to {to}" if to else "") + "; write to the new primary",
                path=self.path, lsn=self.lsn, address=to, epoch=moved.get("epoch"))
        if self._role == "standby":
            return ReadOnlyError("a standby takes no writes (write to the primary, or "
                                 "promote() this standby)", path=self.path, lsn=self.lsn)
        return ReadOnlyError(f"a {self._role} store takes no writes", path=self.path,
                             lsn=self.lsn)

    def _wait_out_hold(self) -> None:
        """A write during a handoff's hold (``_lock`` held): wait until the
        handoff ends. It ended in a move: MovedError; it gave up: go on.
        The wait is one for admission (intake.admission_wait): an aborted
        write leaves it with nothing applied."""
        while self._hold is not None:
            left = self._hold["deadline"] + 1.0 - time.monotonic()
            if left <= 0:
                raise BackpressureError("a handoff holds writes and has not ended",
                                        path=self.path, lsn=self.lsn, reason="handoff_hold")
            _intake.admission_wait(self._hold_cv, left)
        if self._role != "primary":
            raise self._not_primary()

    def _check_fence(self) -> None:
        """Before each write to the log: a directory whose MANIFEST now has a
        newer epoch than this writer's belongs to another writer; this one
        never appends again (MovedError). A stat, and a read only when the
        MANIFEST was replaced."""
        if self._role == "moved":
            raise self._not_primary()
        stamp = _manifest.stamp(self.path)
        if stamp == self._manifest_stamp:
            return
        try:
            man = _manifest.read(self.path)
        except (RehydrateError, OSError):
            return  # (a MANIFEST being replaced: the next write looks again)
        self._manifest_stamp = stamp
        epoch = _manifest.epoch(man, self.path)
        if epoch > self._epoch:
            record = man.get("handoff") or {}
            with self._lock:
                self._role = "moved"
                self._moved = {"epoch": epoch, "address": record.get("to"),
                               "final_lsn": record.get("final_lsn")}
                self._targets.clear()
                self._hold_cv.notify_all()
            raise self._not_primary()

    def _look_for_handoff(self) -> None:
        """On the flusher's tick: a standby of this directory asked for the
        writes (the HANDOFF file); hand over on a thread of its own (it
        stops the flusher)."""
        if self._role != "primary" or self._handing_over or self._closed \
                or not os.path.exists(os.path.join(self.path, _standby.HANDOFF_NAME)):
            return
        request = _standby.claim_request(self.path, self._store_id)
        if request is None:
            return
        self._handing_over = True
        thread = threading.Thread(target=self._hand_over_locally, args=(request,),
                                  name=f"rehydrate-handoff:{self.path}", daemon=True)
        self._handoff_thread = thread
        thread.start()

    def _hand_over_locally(self, request: dict[str, Any]) -> None:
        try:
            self._handoff_prepare(request["request"], float(request["hold_s"]),
                                  request.get("address"))
            if not _standby.requester_alive(self.path, request["request"]):
                # The standby died while this store held its writes: keep them.
                self._handoff_abort(request["request"])
                return
            self._handoff_commit(request["request"], local=True,
                                 demote=request.get("demote") is True)
        except RehydrateError:
            pass  # the standby times out; this store stays primary (or failed)
        finally:
            self._handing_over = False

    def _demote(self) -> _standby.Follow:
        """A store that handed its directory over stays on as a standby of
        it (``_lock`` held): its state is the log up to the handoff's LSN,
        and it follows the new primary's writes from there. The caller
        starts the returned follower once the log is the new primary's."""
        log_start = _manifest.log_start(self._manifest, self.path)
        follower = LogFollower(self._core, self.path, self._open_registry, self._offsets,
                               self.lsn, log_start)
        follow = _standby.Follow(follower, self._lock, self.path,
                                 [self.path, _standby.wal_dir(self.path)], self._refollow)
        self._follow = follow
        follow.on_change = self._reevaluate_gates
        self._role = "standby"
        return follow

    def _handoff_prepare(self, request: str, hold_s: float,
                         address: Optional[str]) -> dict[str, Any]:
        """Hold new writes, make every write taken durable; returns
        {"final_lsn", "epoch"}. The hold ends with ``_handoff_commit`` (a
        move) or ``_handoff_abort`` (writes resume), by itself after
        ``hold_s``."""
        self.sync()  # most of the fsync before the hold: writers go on meanwhile
        with self._lock:
            self._writable()
            self._hold = {"request": request, "since": time.monotonic(),
                          "deadline": time.monotonic() + hold_s, "address": address}
            self._targets.clear()
            final = self.lsn
        try:
            self._journal.make_durable(final)
        except BaseException:
            self._handoff_abort(request)
            raise
        timer = threading.Timer(hold_s, self._handoff_abort, args=(request,))
        timer.daemon = True
        with self._lock:
            if self._hold is not None:
                self._hold["timer"] = timer
        timer.start()
        return {"final_lsn": final, "epoch": self._epoch}

    def _handoff_abort(self, request: str) -> bool:
        """End a hold without a move (writes resume); False if ``request``
        holds nothing (it ended already)."""
        with self._lock:
            hold = self._hold
            if hold is None or hold["request"] != request:
                return False
            self._hold = None
            self._hold_cv.notify_all()
        timer = hold.get("timer")
        if timer is not None:
            timer.cancel()
        return True

    def _handoff_commit(self, request: str, local: bool, demote: bool = False
                        ) -> dict[str, Any]:
        """The fence: epoch + 1 and the handoff record in the MANIFEST,
        durably; then this store is moved and the held writers get
        MovedError. Local: the log is closed and the LOCK released, for the
        standby to take. HandoffError when ``request`` holds nothing (it
        timed out: writes resumed)."""
        with self._lock:
            hold = self._hold
            if hold is None or hold["request"] != request:
                raise HandoffError("no hold for this request (it timed out, and writes "
                                   "resumed)", path=self.path, reason="expired")
            timer = hold.get("timer")
        if timer is not None:
            timer.cancel()
        final = self.lsn
        new_epoch = self._epoch + 1
        man = dict(self._manifest)
        man.pop("clean_end", None)
        man["epoch"] = new_epoch
        man["handoff"] = {"epoch": new_epoch, "final_lsn": final, "request": request,
                          "to": hold.get("address")}
        if not local:
            # The writes move to another directory: this one may never be
            # opened as a primary again (Store.open refuses it).
            man["handoff"]["away"] = True
        try:
            if hold["deadline"] < time.monotonic():
                raise HandoffError("the hold ran out before the fence", path=self.path,
                                   reason="expired")
            # Local: the fence stops live writers as soon as it is seen (the
            # rename); the directory's fsync, which a busy disk can stall,
            # comes after the LOCK is let go. A power cut before it keeps
            # either MANIFEST whole, and kills both writers anyway.
            _manifest.write(self.path, man, sync_dir=not local)
        except BaseException as e:
            self._handoff_abort(request)
            if isinstance(e, OSError) and not isinstance(e, RehydrateError):
                raise HandoffError(f"the fence could not be written: {e}", path=self.path,
                                   reason="failed") from e
            raise
        held_s = time.monotonic() - hold["since"]
        follow = None
        with self._lock:
            self._manifest = man
            self._manifest_stamp = _manifest.stamp(self.path)
            self._role = "moved"
            self._moved = {"epoch": new_epoch, "address": hold.get("address"),
                           "final_lsn": final, "request": request}
            if demote and local:
                follow = self._demote()
        if local:
            # The standby appends to this log from here: let go of it (the
            # held writers still wait, so none of them closes it meanwhile).
            # The LOCK first: the fence already stops this writer, and the
            # standby waits for the LOCK.
            with self._files_lock:
                if self._dirlock is not None:
                    self._dirlock.release(clear_pid=False)
                    self._dirlock = None
            _fileio.fsync_dir(self.path)
            self._journal.stop()
            if self._auto is not None:
                self._auto.stop()
            self._release_files()
        elif self._auto is not None:
            self._auto.stop()  # (a moved store checkpoints nothing more)
        with self._lock:
            self._hold = None
            self._targets.clear()
            self._hold_cv.notify_all()
        if follow is not None:
            follow.start(f"rehydrate-follow:{self.path}")
        self._reevaluate_gates()  # (a moved store's lag is unknown)
        return {"epoch": new_epoch, "final_lsn": final, "held_s": held_s}

    @classmethod
    def _open_following(cls, path: StrPath, options: dict[str, Any], role: str,
                        max_lag_s: float) -> Self:
        """A standby or reader of ``path``: the newest snapshot, then the log
        as far as it goes (no LOCK, nothing written); a standby keeps
        following on a thread."""
        self = cls._new(path, options)
        self._role = role
        self._max_lag_s = max_lag_s
        following = _opening.load_for_following(self.path, self._options, self._core)
        self._manifest = following.manifest
        self._epoch = _manifest.epoch(following.manifest, self.path)
        self._store_id = _manifest.store_id(following.manifest, self.path)
        follower = self._follow_from(following)
        watch = [self.path, _standby.wal_dir(self.path)] if role == "standby" else None
        follow = _standby.Follow(follower, self._lock, self.path, watch, self._refollow)
        self._follow = follow
        follow.on_change = self._reevaluate_gates
        try:
            follow.step()
        except BaseException:
            follow.stop()
            follower.close()
            _forking.untrack(self)
            raise
        self.warmup_report = {"phases": [], "total_s": 0.0}
        follow.start(f"rehydrate-follow:{self.path}")
        self._ready.set()
        return self

    def _follow_from(self, following: _opening.Following) -> LogFollower:
        """A follower of the log after ``following``'s snapshot, whose
        tables become this store's."""
        base = following.base
        follower = LogFollower(self._core, self.path, following.registry, dict(base.offsets),
                               base.lsn, following.log_start)
        self._registry = following.registry
        self._offsets = follower.offsets
        self._manifest = following.manifest
        return follower

    def _refollow(self) -> LogFollower:
        """The follower fell behind the log's start (a checkpoint trimmed
        what it had still to read): start again from the newest snapshot
        (``_lock`` held). Tables read before hold the old state."""
        following = _opening.load_for_following(self.path, self._options, self._core)
        follower = self._follow_from(following)
        self._targets.clear()
        return follower

    def _promote_here(self, timeout_s: float, hold_s: float, demote: bool = False,
                      address: Optional[str] = None, force: bool = False) -> dict[str, Any]:
        """A standby of a local primary takes its directory over: asks for
        the handoff (or finds the primary gone), then appends to the same
        log at the new epoch. Returns the phases."""
        follow = self._follow
        if self._role != "standby" or follow is None:
            raise HandoffError(f"only a standby can be promoted (this store is a {self._role})",
                               path=self.path, reason="not_standby")
        if follow.error is not None:
            raise HandoffError(f"this standby stopped following: {follow.error}",
                               path=self.path, reason="failed") from follow.error
        # Writes that come here while this standby takes over wait for it
        # (instead of a ReadOnlyError each, which clients would retry in a
        # tight loop against the process that is promoting): admitted once
        # it is the primary, refused as before if the promote fails.
        request = secrets.token_hex(8)
        with self._lock:
            self._hold = {"request": request, "since": time.monotonic(), "promoting": True,
                          "deadline": time.monotonic() + timeout_s + hold_s + 1.0}
        try:
            if self._remote is not None:
                return self._promote_remote(timeout_s, hold_s, address, force)
            held: list[int] = []  # the request's .live lock, while it is asked for
            try:
                return self._promote_local(timeout_s, hold_s, demote, address, request, held)
            finally:
                for live in held:
                    _standby.release_request(self.path, request, live)
        finally:
            with self._lock:
                if self._hold is not None and self._hold.get("promoting"):
                    self._hold = None
                self._hold_cv.notify_all()
            self._reevaluate_gates()  # (a primary's lag is 0)

    def _promote_local(self, timeout_s: float, hold_s: float, demote: bool,
                       address: Optional[str], request: str, held: list[int]
                       ) -> dict[str, Any]:
        follow = self._follow
        assert follow is not None
        t0 = time.perf_counter()
        start = time.monotonic()
        current = _manifest.read(self.path)
        epoch = _manifest.epoch(current, self.path)

        def gone() -> bool:
            return _standby.lock_is_free(self.path)

        fence: Optional[dict[str, Any]] = None
        if not gone():
            held.append(_standby.request_handoff(self.path, {
                "request": request, "store_id": _manifest.store_id(current, self.path),
                "pid": os.getpid(), "hold_s": hold_s, "address": address,
                "demote": demote}))
            try:
                fence = _standby.wait_for_fence(self.path, request, epoch, start + timeout_s,
                                                gone)
            except HandoffError as e:
                if _standby.withdraw_request(self.path, request) or e.reason != "timeout":
                    raise
                # The primary took the request as the time ran out: it is
                # handing over, and either fences or gives up within hold_s.
                fence = _standby.wait_for_fence(self.path, request, epoch,
                                                time.monotonic() + hold_s + 1.0, gone)
        t_fenced = time.perf_counter()
        follow.stop(wait=False)
        t_stopped = time.perf_counter()
        lock = self._take_lock(time.monotonic() + max(1.0, hold_s))
        t_locked = time.perf_counter()
        try:
            with self._lock:
                follow.follower.poll()
            follower = follow.follower
            if fence is not None:
                final = (fence.get("handoff") or {}).get("final_lsn")
                if follower.lsn != final:
                    raise HandoffError(
                        f"the primary handed over at LSN {final}, but this standby holds "
                        f"LSN {follower.lsn}", path=self.path, lsn=follower.lsn,
                        reason="behind")
                man = fence
            else:
                # The primary died before it claimed our request: take it
                # back, or this store, once primary, claims it on its own
                # flusher's tick and hands the directory over to nobody.
                _standby.withdraw_request(self.path, request)
                man = self._take_over_from_the_dead(follower, epoch)
        except BaseException:
            lock.release()
            raise
        t_caught_up = time.perf_counter()
        path, size = follower.at_end()
        self._dirlock = lock
        self._become_primary(man, follower.next_lsn, path, size)
        t_end = time.perf_counter()
        return {"role": "primary", "epoch": self._epoch, "lsn": self.lsn,
                "failover": fence is None,
                "phases": {"request_s": t_fenced - t0, "catch_up_s": t_caught_up - t_fenced,
                           "resume_s": t_end - t_caught_up},
                "detail": {"stop_s": t_stopped - t_fenced, "lock_s": t_locked - t_stopped,
                           "apply_s": t_caught_up - t_locked, **self._resume_detail},
                "total_s": t_end - t0}

    def _take_lock(self, deadline: float) -> DirLock:
        """The directory's LOCK, which the old primary releases right after
        its fence: tried until ``deadline``."""
        while True:
            try:
                return DirLock(self.path)
            except LockedError:
                if time.monotonic() >= deadline:
                    raise HandoffError("the old primary still holds the LOCK after its "
                                       "fence", path=self.path, reason="locked") from None
                time.sleep(0.0002)

    def _take_over_from_the_dead(self, follower: LogFollower, epoch: int) -> dict[str, Any]:
        """The primary is gone (its LOCK is free): cut what it left of a
        frame at the log's end (a torn tail: the write never completed, so
        it was never acknowledged), keeping it as evidence, and fence the
        directory at ``epoch + 1``."""
        if follower.pending_bytes:
            path, offset = follower.at_end()
            size = os.path.getsize(path)
            detail = follower.waiting_detail or "partial frame at the log's end"
            apply_actions(self.path, [Action("evidence", path, offset, size, "torn_tail", detail),
                                      Action("truncate", path, offset)])
            follower.pending_bytes = 0
        man = _manifest.read(self.path)
        man.pop("clean_end", None)
        man["epoch"] = max(epoch, _manifest.epoch(man, self.path)) + 1
        man["handoff"] = {"epoch": man["epoch"], "final_lsn": follower.lsn, "request": None,
                          "to": None, "failover": True}
        _manifest.write(self.path, man)
        return man

    def _become_primary(self, man: dict[str, Any], next_lsn: int, resume_path: str,
                        resume_size: int) -> None:
        """A standby that holds the whole log, and the LOCK, starts writing."""
        t0 = time.perf_counter()
        follow = self._follow
        self._manifest = man
        self._epoch = _manifest.epoch(man, self.path)
        self._store_id = _manifest.store_id(man, self.path)
        self._manifest_stamp = _manifest.stamp(self.path)
        t1 = time.perf_counter()
        with self._lock:
            self._buf = self._core.LogBuffer(next_lsn)
            self._role = "primary"
            self._follow = None
            self._remote = None
        t2 = time.perf_counter()
        if follow is not None:
            follow.follower.close()
        t_closed = time.perf_counter()
        self._journal.open(next_lsn, resume_path, resume_size)
        t3 = time.perf_counter()
        self._start_auto_checkpoint()
        self._start_archiver()
        self._close_at_exit()
        self._resume_detail = {"stamp_s": t1 - t0, "buffer_s": t2 - t1,
                               "close_s": t_closed - t2, "log_s": t3 - t_closed,
                               **self._journal.open_detail, "rest_s": time.perf_counter() - t3}

    # ------------------------------------------------- replication: HTTP
    def _replication_hello(self) -> dict[str, Any]:
        """What the replication endpoints say of this store (``hello``)."""
        man = self._manifest
        out: dict[str, Any] = {
            "store_id": self._store_id, "epoch": self._epoch, "role": self._role,
            "lsn": self.lsn, "durable_lsn": self._journal.durable_lsn,
            "log_start": man.get("log_start", 1),
            "snapshots": list(man.get("snapshots") or []),
            "versions": dict(man.get("versions") or {}),
            "ledger": list(man.get("ledger") or [])}
        if self._follow is not None:
            out["lag"] = self._follow.lag()
        return out

    def _replication_wait(self, seen_lsn: int, timeout_s: float) -> int:
        if self._follow is not None:
            self._follow.wait_for_lsn(seen_lsn + 1, timeout_s)
            return self.lsn
        return self._journal.wait_for_log(seen_lsn, timeout_s)

    def _replication_handoff(self, body: dict[str, Any]) -> dict[str, Any]:
        """A handoff request from a standby (or, on a standby, a promote
        request): the phases of docs/replication.md. Refusals are
        HandoffError, whose reason the endpoint answers with."""
        phase = body.get("phase")
        request = body["request"]
        try:
            if phase == "promote":
                promote = getattr(self, "promote")
                result: dict[str, Any] = promote(
                    timeout_s=float(body.get("timeout_s") or 5.0),
                    hold_s=float(body.get("hold_s") or 2.0),
                    address=body.get("address"))
                return result
            if phase == "prepare":
                return self._handoff_prepare(request, float(body.get("hold_s") or 2.0),
                                             body.get("address"))
            if phase == "commit":
                moved = self._moved
                if moved is not None and moved.get("request") == request:
                    return {"epoch": moved["epoch"], "final_lsn": moved["final_lsn"]}
                answer = self._handoff_commit(request, local=False)
                self._journal.wake_readers()  # (streams send END "moved" now)
                return answer
            return {"aborted": self._handoff_abort(request)}
        except HandoffError:
            raise
        except RehydrateError as e:
            raise HandoffError(f"refused: {e}", path=self.path,
                               reason=e.reason) from e

    def replication_source(self) -> Any:
        """The ``replication.Source`` the replication endpoints of
        ``serve_http(replication=True)`` serve from (docs/replication.md)."""
        from .replication import Source

        return Source(self.path, self._replication_hello, self._replication_wait,
                      self._replication_handoff)

    @classmethod
    def _open_remote_standby(cls, path: StrPath, options: dict[str, Any], url: str,
                             token: Optional[str], ssl_context: Any,
                             max_lag_s: float, from_archive: Any = None) -> Self:
        """A standby of the primary at ``url``, in its own directory ``path``:
        bootstrapped from the primary's newest snapshot when the directory
        is new, then fed the log over HTTP into its copy (docs/replication.md)."""
        from .replication_client import Mirror, ReplicationClient, bootstrap

        client = ReplicationClient(url, token=token, ssl_context=ssl_context)
        hello = client.hello()
        directory = os.fspath(path)
        start = None
        if not os.path.exists(os.path.join(directory, _manifest.MANIFEST_NAME)):
            if from_archive is not None:
                # The copy comes from the archive; the primary streams from
                # where it ends (a prefix of the primary's log, byte for byte).
                from .archive import read_manifest
                from .objstore import open_object_store
                from .archive_restore import restore

                archived = read_manifest(open_object_store(from_archive))
                if archived is not None and archived["store_id"] != hello.get("store_id"):
                    raise ReplicationError(
                        f"the archive holds store {archived['store_id']}; {client.peer} serves "
                        f"store {hello.get('store_id')}", path=directory, peer=client.peer,
                        reason="foreign_store")
                restore(from_archive, directory)
            else:
                start = bootstrap(client, hello, directory)
        self = cls._new(directory, options)
        self._role = "standby"
        self._max_lag_s = max_lag_s
        self._source = client.peer
        try:
            self._dirlock = DirLock(self.path)
            # Another store's primary is refused before anything here is touched.
            local_id = _manifest.store_id(_manifest.read(self.path), self.path)
            if local_id is None or local_id != hello.get("store_id"):
                raise ReplicationError(
                    f"{self.path} is a copy of store {local_id}; {client.peer} serves store "
                    f"{hello.get('store_id')}", path=self.path, peer=client.peer,
                    reason="foreign_store")
            mirror = Mirror(self.path)
            if start is None:
                # The copy is this standby's own: part of a frame at its end
                # (killed inside a write) is cut, and streamed again whole.
                mirror.cut_torn_tail()
            following = _opening.load_for_following(self.path, self._options, self._core)
            self._epoch = _manifest.epoch(following.manifest, self.path)
            self._store_id = local_id
            follower = self._follow_from(following)
            follow = _standby.Follow(follower, self._lock, client.peer, None, self._refollow)
            follow.remote = True
            self._follow = follow
            follow.on_change = self._reevaluate_gates
            follow.step()
            self._refuse_a_primary_behind(hello, client.peer)
        except BaseException:
            self._release()
            raise
        self._remote = _standby.Receiver(client, mirror, local_id, follow, start,
                                         self._rebootstrap)
        self.warmup_report = {"phases": [], "total_s": 0.0}
        self._remote.start(f"rehydrate-receive:{self.path}")
        self._ready.set()
        return self

    def _refuse_a_primary_behind(self, hello: dict[str, Any], peer: str) -> None:
        """A copy that holds more than the primary has written (the primary
        restored from an older copy, or it lost writes it had sent), or
        comes from a newer epoch, is another history: following would mix
        the two. ReplicationError ``ahead``; the copy is left as it is."""
        primary_lsn, primary_epoch = hello.get("lsn"), hello.get("epoch", 1)
        if type(primary_lsn) is int and self.lsn > primary_lsn:
            raise ReplicationError(
                f"{self.path} holds the log up to LSN {self.lsn}; {peer} has written only up "
                f"to {primary_lsn}: the copy is ahead of its primary (restored from an older "
                "copy?)", path=self.path, lsn=self.lsn, peer=peer, reason="ahead")
        if type(primary_epoch) is int and self._epoch > primary_epoch:
            raise ReplicationError(
                f"{self.path} is at epoch {self._epoch}; {peer} at {primary_epoch}: the copy "
                "comes from a newer primary", path=self.path, lsn=self.lsn, peer=peer,
                reason="ahead")

    def _rebootstrap(self) -> tuple[int, int]:
        """The primary trimmed the log this standby needs next: start again
        from its newest snapshot (the receiver's thread; returns where the
        stream starts)."""
        from .replication_client import bootstrap

        remote = self._remote
        assert remote is not None
        start = bootstrap(remote.client, remote.client.hello(), self.path, again=True)
        remote.mirror.reset()
        with self._lock:
            follow = self._follow
            assert follow is not None
            old, follow.follower = follow.follower, self._refollow()
            old.close()
        return start

    def _promote_remote(self, timeout_s: float, hold_s: float,
                        address: Optional[str], force: bool = False) -> dict[str, Any]:
        """Over HTTP: prepare (the primary holds its writes and says the
        final LSN), catch up to it, make the copy durable, commit (the
        primary fences itself), then take the new epoch here."""
        remote, follow = self._remote, self._follow
        assert remote is not None and follow is not None
        if follow.error is not None:
            raise HandoffError(f"this standby stopped following: {follow.error}",
                               path=self.path, reason="failed") from follow.error
        t0 = time.perf_counter()
        request = secrets.token_hex(8)
        body = {"store_id": self._store_id, "request": request, "hold_s": hold_s,
                "address": address}
        try:
            prepared = remote.client.handoff(dict(body, phase="prepare"))
        except ReplicationError as e:
            unreachable = e.reason in ("connection", "timeout")
            if unreachable and force:
                return self._take_over_unreachable(request, address, t0)
            raise HandoffError(f"the primary refused the handoff: {e.detail}", path=self.path,
                               peer=remote.client.peer, reason="primary_unreachable"
                               if unreachable else e.reason) from e
        t_held = time.perf_counter()
        final = int(prepared["final_lsn"])
        try:
            if not follow.wait_for_lsn(final, timeout_s) or self.lsn != final:
                raise HandoffError(f"this standby did not reach LSN {final} in time "
                                   f"(it holds {self.lsn})", path=self.path, lsn=self.lsn,
                                   reason="timeout")
            remote.mirror.sync()
        except BaseException:
            try:
                remote.client.handoff(dict(body, phase="abort"))
            except ReplicationError:
                pass  # (the primary's hold runs out by itself)
            raise
        t_caught_up = time.perf_counter()
        try:
            committed = remote.client.handoff(dict(body, phase="commit"))
        except ReplicationError as e:
            raise HandoffError(f"the primary did not commit the handoff: {e.detail}",
                               path=self.path, peer=remote.client.peer,
                               reason=e.reason) from e
        t_fenced = time.perf_counter()
        remote.stop(wait=False)
        with self._lock:
            follow.follower.poll()
        follow.stop()  # (a late message from the receiver applies nothing now)
        man = dict(self._manifest)
        man.pop("clean_end", None)
        man["epoch"] = int(committed["epoch"])
        man["handoff"] = {"epoch": man["epoch"], "final_lsn": final, "request": request,
                          "to": address, "from": remote.client.peer}
        _manifest.write(self.path, man)
        path, size = follow.follower.at_end()
        self._become_primary(man, follow.follower.next_lsn, path, size)
        t_end = time.perf_counter()
        return {"role": "primary", "epoch": self._epoch, "lsn": self.lsn, "failover": False,
                "phases": {"prepare_s": t_held - t0, "catch_up_s": t_caught_up - t_held,
                           "commit_s": t_fenced - t_caught_up, "resume_s": t_end - t_fenced},
                "total_s": t_end - t0}

    def _take_over_unreachable(self, request: str, address: Optional[str],
                               t0: float) -> dict[str, Any]:
        """``promote(force=True)`` with the primary out of reach: what the
        copy holds becomes the log at epoch + 1. What the primary
        acknowledged but had not sent is lost, and it cannot be fenced:
        should it come back it still thinks itself the primary (its own
        MANIFEST is at the old epoch), which is why this is asked for."""
        remote, follow = self._remote, self._follow
        assert remote is not None and follow is not None
        remote.stop(wait=True)  # (no byte reaches the copy from here on)
        with self._lock:
            follow.follower.poll()
        follow.stop()
        man = dict(self._manifest)
        man.pop("clean_end", None)
        man["epoch"] = self._epoch + 1
        man["handoff"] = {"epoch": man["epoch"], "final_lsn": self.lsn, "request": request,
                          "to": address, "from": remote.client.peer, "failover": True}
        _manifest.write(self.path, man)
        path, size = follow.follower.at_end()
        self._become_primary(man, follow.follower.next_lsn, path, size)
        t_end = time.perf_counter()
        return {"role": "primary", "epoch": self._epoch, "lsn": self.lsn, "failover": True,
                "may_have_lost_writes": True, "phases": {"resume_s": t_end - t0},
                "total_s": t_end - t0}
