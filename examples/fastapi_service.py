"""A FastAPI service whose state lives in a rehydrate store.

Run it under uvicorn (the state directory comes from ``STATE_DIR``)::

    STATE_DIR=/tmp/counters uvicorn --factory fastapi_service:create_app --port 8080

What it shows (docs/integrations.md, "FastAPI"):

- The lifespan opens the store **in the background**
  (``rehydrate.aio.open_background``): uvicorn starts serving at once, and
  ``/rehydrate/readyz`` answers 503 with the warmup's progress until the
  state is back, then 200. A Kubernetes readiness probe on it keeps traffic
  away until then (examples/kubernetes/).
- Writes go through the async API: a write taken while the open still
  replays waits for admission, and a ``sync="always"`` write for its fsync,
  without blocking the event loop, so probes keep answering meanwhile.
- Reads are plain memory reads. A read of a table whose state is not in yet
  would wait for it, so the read routes answer 503 (with ``Retry-After``)
  until the table is ready instead of holding the loop.
- ``/rehydrate/readyz``, ``/rehydrate/livez`` and ``/rehydrate/metrics``
  (Prometheus, OpenMetrics when asked) are the store's own ASGI app,
  mounted in the service's server: no second port.
- uvicorn turns SIGTERM into the lifespan's shutdown, where the store is
  closed: every write acknowledged before is durable, whatever the sync
  mode, and the LOCK is released for the next pod.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from starlette.types import Receive, Scope, Send

import rehydrate.aio as rha


def create_app(state_dir: str | None = None, sync: str | None = None) -> FastAPI:
    """The service; ``state_dir`` and ``sync`` default to the ``STATE_DIR``
    and ``SYNC`` environment variables ("interval" when unset)."""
    path = state_dir or os.environ["STATE_DIR"]
    mode = sync or os.environ.get("SYNC", "interval")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await rha.open_background(path, sync=mode, checkpoint_every_s=300)
        app.state.store = store
        app.state.probes = store.asgi_app()
        try:
            yield
        finally:
            await store.close()  # drains held writes, fsyncs, unlocks

    app = FastAPI(lifespan=lifespan)

    async def probes(scope: Scope, receive: Receive, send: Send) -> None:
        # The store exists once the lifespan ran (before any request).
        await app.state.probes(scope, receive, send)

    app.mount("/rehydrate", probes)

    def ready_table(request: Request, name: str) -> Any:
        """The table's mapping, or 503 while its state is still loading."""
        store = request.app.state.store
        tables = store.readiness().get("tables")
        if tables is not None and not tables.get(name, True):
            raise HTTPException(503, f"{name} is still loading", headers={"Retry-After": "1"})
        try:
            return store.table(name)
        except KeyError:
            return {}

    @app.post("/counters/{name}")
    async def increment(name: str, request: Request, by: int = 1) -> dict[str, int]:
        lsn: int = await request.app.state.store.incr("counters", name, by)
        return {"lsn": lsn}

    @app.get("/counters/{name}")
    async def counter(name: str, request: Request) -> dict[str, Any]:
        return {"name": name, "value": ready_table(request, "counters").get(name, 0)}

    @app.put("/sessions/{sid}")
    async def put_session(sid: str, body: dict[str, Any], request: Request) -> dict[str, int]:
        lsn: int = await request.app.state.store.put("sessions", sid, body)
        return {"lsn": lsn}

    @app.get("/sessions/{sid}")
    async def get_session(sid: str, request: Request) -> dict[str, Any]:
        value = ready_table(request, "sessions").get(sid)
        if value is None:
            raise HTTPException(404, f"no session {sid!r}")
        return {"sid": sid, "session": value}

    @app.post("/sync")
    async def sync_all(request: Request) -> dict[str, int]:
        return {"durable_lsn": await request.app.state.store.sync()}

    return app
