"""A Starlette app with two stores' probes mounted, under uvicorn:
``asgi_probes.py READY_DIR HELD_DIR``.

READY_DIR is opened (a write, a checkpoint, a write); HELD_DIR is written,
closed and opened in the background with a prime hook that holds until told. Mounted:
``/ready`` (``ready.asgi_app()``), ``/held`` (``held.asgi_app()``) and
``/both`` (``observe.asgi_app(ready, held)``), plus a route of the app
itself, ``/hello``. Serves on 127.0.0.1, a free port; prints "serving PORT".
Commands on stdin, each answered "ok" on stdout: ``release`` (the hook
returns) and ``fail`` (READY_DIR's next fsync fails: the store is then in
fail-stop).
"""

import socket
import sys
import threading

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from rehydrate import Store, Warmup, _fileio, observe


def main() -> int:
    ready_dir, held_dir = sys.argv[1], sys.argv[2]
    ready = Store.open(ready_dir, sync="always")
    ready.put("t", 1, 1)
    ready.checkpoint()
    ready.put("t", 2, 2)
    with Store.open(held_dir) as s:
        s.put("t", 1, 1)
    go = threading.Event()

    def prime(store, progress):
        go.wait()

    held = Store.open_background(held_dir, warmup=Warmup(prime=[prime], listeners=[]))

    async def hello(request):
        return PlainTextResponse("hello")

    app = Starlette(routes=[
        Route("/hello", hello),
        Mount("/ready", app=ready.asgi_app()),
        Mount("/held", app=held.asgi_app()),
        Mount("/both", app=observe.asgi_app(ready, held)),
    ])

    def commands():
        for line in sys.stdin:
            if line.strip() == "release":
                go.set()
            elif line.strip() == "fail":
                def broken(fd):
                    raise OSError(5, "Input/output error")

                _fileio.fsync = broken
                try:
                    ready.put("t", 3, 3)
                except Exception:
                    pass
            print("ok", flush=True)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    print(f"serving {sock.getsockname()[1]}", flush=True)
    threading.Thread(target=commands, daemon=True).start()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
