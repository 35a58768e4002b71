"""Object storage access for the archive (docs/archive.md): one
``ObjectStore`` over a ``pyarrow.fs`` filesystem and a prefix, counting
its requests by kind and retrying the ones that fail with exponential
backoff and full jitter.

Every call names an object by its key below the prefix. A missing object
is ``None`` (or ``ArchiveError`` ``missing_object`` where the caller needs
it), never an empty file; an unreachable or failing store is
``ArchiveError`` ``unreachable`` once the attempts are spent. Uploads are
whole objects (an S3 PUT is visible only once complete; on a local
filesystem the object is written aside, fsynced and renamed), and nothing
refers to an object until it is uploaded: the archive's manifest is
written last.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections import Counter
from typing import Any, Callable, Optional, TypeVar, Union

from . import _fileio
from ._backend import core
from .backoff import backoff_delays
from .errors import ArchiveError, ConfigError, RetryableError

T = TypeVar("T")

#: What ``archive=`` takes: a URI ``pyarrow.fs.FileSystem.from_uri``
#: understands, or (a ``pyarrow.fs.FileSystem``, a prefix in it).
ArchiveTarget = Union[str, tuple[Any, str]]

REQUEST_KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE")
#: Bytes read per range request when downloading a big object.
CHUNK_BYTES = 8 * 1024 * 1024
# Query parameters whose values are secrets: never printed.
_SECRET_PARAMS = ("secret", "key", "token", "password", "credential", "signature")


def redact(uri: str) -> str:
    """``uri`` with credentials and secret query values replaced by ``***``."""
    scheme, sep, rest = uri.partition("://")
    head, q, tail = rest.partition("?")
    if sep and "@" in head:
        # Credentials before the host, taken whole up to the last "@" before
        # the query: a secret pasted unescaped (AWS secret keys hold "/")
        # would otherwise end the netloc early and be shown.
        uri = f"{scheme}://***@{head.rsplit('@', 1)[1]}{q}{tail}"
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return "<bad uri>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    shown = [(k, "***" if any(s in k.lower() for s in _SECRET_PARAMS) else v) for k, v in query]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path,
                                    urllib.parse.urlencode(shown, safe=":/*"), ""))


class ObjectStore:
    """Objects below ``root`` in ``fs``; ``uri`` is what errors and tools
    show (credentials removed). Thread-safe (counters under a lock)."""

    def __init__(self, fs: Any, root: str, uri: str, *, attempts: int = 4,
                 base_s: float = 0.1, cap_s: float = 5.0) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.uri = uri
        self.attempts = attempts
        self.base_s, self.cap_s = base_s, cap_s
        self.local_root: Optional[str] = None
        from pyarrow.fs import LocalFileSystem

        if isinstance(fs, LocalFileSystem):
            self.local_root = self.root
        self.requests: Counter[str] = Counter({k: 0 for k in REQUEST_KINDS})
        self.failures: Counter[str] = Counter({k: 0 for k in REQUEST_KINDS})
        self.bytes_up = 0
        self.bytes_down = 0
        self._lock = threading.Lock()
        self.cancelled = threading.Event()  # set: stop retrying (a closing store)

    # ----------------------------------------------------------- accounting
    def _count(self, kind: str, up: int = 0, down: int = 0, failed: bool = False) -> None:
        with self._lock:
            self.requests[kind] += 1
            if failed:
                self.failures[kind] += 1
            self.bytes_up += up
            self.bytes_down += down

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": dict(self.requests), "failures": dict(self.failures),
                    "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}

    def key(self, name: str) -> str:
        return f"{self.root}/{name}" if self.root else name

    def _retry(self, kind: str, name: str, fn: Callable[[], T],
               attempts: Optional[int] = None) -> T:
        """``fn()``, tried up to ``attempts`` times with backoff and jitter
        between tries; a missing object (FileNotFoundError) is not retried."""
        tries = attempts or self.attempts
        delays = backoff_delays(self.base_s, self.cap_s)
        for attempt in range(1, tries + 1):
            try:
                return fn()
            except (FileNotFoundError, ArchiveError):
                raise  # (missing, or a verdict on the bytes: another try changes nothing)
            except (OSError, ValueError, RetryableError) as e:
                # (pyarrow raises OSError and ValueError for a failing store;
                # a filesystem of one's own may say RetryableError.)
                if attempt == tries or self.cancelled.is_set():
                    raise ArchiveError(f"{kind} failed after {attempt} attempt(s): {e}",
                                       uri=self.uri, object=name, reason="unreachable") from e
                if self.cancelled.wait(next(delays)):
                    raise ArchiveError(f"{kind} given up: the store is closing",
                                       uri=self.uri, object=name, reason="unreachable") from e
        raise AssertionError("unreachable")  # pragma: no cover

    # -------------------------------------------------------------- writes
    def put_bytes(self, name: str, data: bytes, attempts: Optional[int] = None) -> None:
        """Upload ``data`` as object ``name``, whole (see the module doc)."""
        def put() -> None:
            try:
                if self.local_root is not None:
                    path = os.path.join(self.local_root, name)
                    _fileio.makedirs(os.path.dirname(path))
                    _fileio.write_file_atomic(path, data)
                else:
                    with self.fs.open_output_stream(self.key(name)) as out:
                        out.write(data)
            except (OSError, ValueError):
                self._count("PUT", failed=True)
                raise
            self._count("PUT", up=len(data))
        self._retry("PUT", name, put, attempts)

    def put_file(self, name: str, path: str, extra: bytes = b"",
                 attempts: Optional[int] = None) -> tuple[int, int]:
        """Upload the local file ``path`` (then ``extra``) as ``name``,
        streaming it; returns (bytes of the file, CRC32C of those bytes).
        FileNotFoundError when the local file went meanwhile."""
        crc32c = core().crc32c

        def put() -> tuple[int, int]:
            n, crc = 0, 0
            try:
                with open(path, "rb") as src:
                    if self.local_root is not None:
                        dest = os.path.join(self.local_root, name)
                        _fileio.makedirs(os.path.dirname(dest))
                        tmp = f"{dest}.tmp{os.getpid()}.{threading.get_ident()}"
                        with open(tmp, "wb") as out:
                            while chunk := src.read(CHUNK_BYTES):
                                out.write(chunk)
                                n += len(chunk)
                                crc = crc32c(chunk, crc)
                            out.write(extra)
                            out.flush()
                            os.fsync(out.fileno())
                        os.replace(tmp, dest)
                        _fileio.fsync_dir(os.path.dirname(dest))
                    else:
                        with self.fs.open_output_stream(self.key(name)) as out:
                            while chunk := src.read(CHUNK_BYTES):
                                out.write(chunk)
                                n += len(chunk)
                                crc = crc32c(chunk, crc)
                            out.write(extra)
            except FileNotFoundError:
                raise
            except (OSError, ValueError):
                self._count("PUT", failed=True)
                raise
            self._count("PUT", up=n + len(extra))
            return n, crc
        return self._retry("PUT", name, put, attempts)

    def delete(self, name: str, attempts: Optional[int] = None) -> None:
        """Remove object ``name`` (gone already: fine)."""
        def rm() -> None:
            try:
                self.fs.delete_file(self.key(name))
            except FileNotFoundError:
                self._count("DELETE")
                return
            except (OSError, ValueError):
                self._count("DELETE", failed=True)
                raise
            self._count("DELETE")
        self._retry("DELETE", name, rm, attempts)

    # --------------------------------------------------------------- reads
    def size(self, name: str, attempts: Optional[int] = None) -> Optional[int]:
        """The size of object ``name``; None when there is none."""
        from pyarrow.fs import FileType

        def head() -> Optional[int]:
            try:
                info = self.fs.get_file_info(self.key(name))
            except (OSError, ValueError):
                self._count("HEAD", failed=True)
                raise
            self._count("HEAD")
            if info.type == FileType.NotFound:
                return None
            if info.type != FileType.File:
                raise ArchiveError(f"{name} is not an object", uri=self.uri, object=name,
                                   reason="bad_object")
            return int(info.size)
        return self._retry("HEAD", name, head, attempts)

    def get_bytes(self, name: str, attempts: Optional[int] = None,
                  max_bytes: int = 1 << 30) -> Optional[bytes]:
        """The whole object ``name`` (at most ``max_bytes``: a larger one is
        ``bad_object``); None when there is none."""
        def get() -> Optional[bytes]:
            try:
                with self.fs.open_input_stream(self.key(name)) as src:
                    data = src.read(max_bytes + 1)
            except FileNotFoundError:
                self._count("GET")
                return None
            except (OSError, ValueError):
                self._count("GET", failed=True)
                raise
            self._count("GET", down=len(data))
            return bytes(data)
        data = self._retry("GET", name, get, attempts)
        if data is not None and len(data) > max_bytes:
            raise ArchiveError(f"{name} is larger than {max_bytes} bytes", uri=self.uri,
                               object=name, reason="bad_object")
        return data

    def stream_to(self, name: str, n: int, sink: Callable[[int, bytes], None],
                  attempts: Optional[int] = None) -> int:
        """The first ``n`` bytes of object ``name`` in one GET, handed to
        ``sink(offset, chunk)`` a chunk at a time (memory stays at a chunk
        whatever the object's size); returns their CRC32C. A retry starts
        the object again (``sink`` gets the same offsets again).
        ``missing_object`` / ``bad_object`` (shorter than ``n``)."""
        crc32c = core().crc32c

        def get() -> int:
            at, crc = 0, 0
            try:
                with self.fs.open_input_stream(self.key(name)) as src:
                    while at < n:
                        chunk = src.read(min(CHUNK_BYTES, n - at))
                        if not chunk:
                            break
                        sink(at, chunk)
                        crc = crc32c(chunk, crc)
                        at += len(chunk)
            except FileNotFoundError:
                self._count("GET")
                raise
            except (OSError, ValueError):
                self._count("GET", failed=True, down=at)
                raise
            self._count("GET", down=at)
            if at != n:
                raise ArchiveError(f"the object ends early: {at} of {n} bytes", uri=self.uri,
                                   object=name, offset=at, reason="bad_object")
            return crc
        try:
            return self._retry("GET", name, get, attempts)
        except FileNotFoundError as e:
            raise ArchiveError("the object is missing (the manifest lists it)", uri=self.uri,
                               object=name, reason="missing_object") from e

    def open_ranged(self, name: str, attempts: Optional[int] = None) -> Any:
        """Object ``name`` opened for range reads (``get_range(...,
        handle=)``, from any thread; the caller closes it): one HEAD for
        the object, where opening it for each range costs a HEAD per
        range. ``missing_object`` when there is none."""
        def head() -> Any:
            try:
                src = self.fs.open_input_file(self.key(name))
            except FileNotFoundError:
                self._count("HEAD")
                raise
            except (OSError, ValueError):
                self._count("HEAD", failed=True)
                raise
            self._count("HEAD")
            return src
        try:
            return self._retry("HEAD", name, head, attempts)
        except FileNotFoundError as e:
            raise ArchiveError("the object is missing (the manifest lists it)", uri=self.uri,
                               object=name, reason="missing_object") from e

    def get_range(self, name: str, offset: int, n: int,
                  attempts: Optional[int] = None, handle: Any = None) -> bytes:
        """``n`` bytes of object ``name`` from ``offset`` (a range request:
        through ``handle`` from ``open_ranged``, else the object is opened,
        a HEAD, for this read); ``missing_object`` when the object is gone,
        ``bad_object`` when it is shorter than asked. A retry opens the
        object anew."""
        opened = [handle]

        def get() -> bytes:
            src = opened[0]
            try:
                if src is not None:
                    data = src.read_at(n, offset)
                else:
                    self._count("HEAD")
                    with self.fs.open_input_file(self.key(name)) as src:
                        data = src.read_at(n, offset)
            except FileNotFoundError:
                self._count("GET")
                raise
            except (OSError, ValueError):
                opened[0] = None
                self._count("GET", failed=True)
                raise
            self._count("GET", down=len(data))
            return bytes(data)
        try:
            data = self._retry("GET", name, get, attempts)
        except FileNotFoundError as e:
            raise ArchiveError("the object is missing (the manifest lists it)", uri=self.uri,
                               object=name, offset=offset, reason="missing_object") from e
        if len(data) != n:
            raise ArchiveError(f"the object ends early: {len(data)} of {n} bytes at offset "
                               f"{offset}", uri=self.uri, object=name, offset=offset,
                               reason="bad_object")
        return data

    def list(self, sub: str = "", attempts: Optional[int] = None) -> list[tuple[str, int]]:
        """(name, size) of every object below ``sub`` (a LIST: tools only;
        an archiving store never lists)."""
        from pyarrow.fs import FileSelector, FileType

        def ls() -> list[tuple[str, int]]:
            base = self.key(sub).rstrip("/")
            try:
                infos = self.fs.get_file_info(FileSelector(base, recursive=True,
                                                           allow_not_found=True))
            except (OSError, ValueError):
                self._count("LIST", failed=True)
                raise
            self._count("LIST")
            cut = len(self.root) + 1 if self.root else 0
            return sorted((i.path[cut:], int(i.size)) for i in infos
                          if i.type == FileType.File)
        return self._retry("LIST", sub, ls, attempts)


def open_object_store(target: ArchiveTarget, *, create: bool = True,
                      **retry: Any) -> ObjectStore:
    """The ``ObjectStore`` for ``archive=``: a URI (``s3://bucket/prefix?
    endpoint_override=...``, ``gs://...``, ``file:///path``) or a
    (``pyarrow.fs.FileSystem``, prefix) pair. ConfigError for anything else,
    a URI that names no bucket included. ``create``: make a local prefix's
    directory (a writer's; readers pass False and find no archive there)."""
    import pyarrow.fs as pafs

    check_target(target)
    if isinstance(target, tuple):
        fs, root = target
        shown = f"{fs.type_name}://{root.strip('/')}"
    else:
        try:
            fs, root = pafs.FileSystem.from_uri(target)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"archive URI {redact(target)!r} is not usable: {e}") from e
        shown = redact(target)
        if isinstance(fs, pafs.S3FileSystem):
            fs = tune_s3(fs)
    if isinstance(fs, pafs.LocalFileSystem):
        root = os.path.abspath(root or "/")
        if create:
            os.makedirs(root, exist_ok=True)
    elif isinstance(target, str) and fs.type_name in ("s3", "gcs") and not root.strip("/"):
        raise ConfigError(f"archive URI {shown!r} names no bucket (SCHEME://BUCKET/PREFIX)")
    return ObjectStore(fs, root, shown, **retry)


#: Seconds to connect, and of a stalled transfer, before an S3 request
#: fails (and is retried by ``ObjectStore``).
S3_CONNECT_TIMEOUT_S = 3.0
S3_REQUEST_TIMEOUT_S = 20.0


def tune_s3(fs: Any) -> Any:
    """``fs`` (made by ``from_uri``) with the settings an archive wants:
    at most 2 attempts per request inside the SDK (``ObjectStore`` retries
    with backoff and jitter on top; ``from_uri``'s own strategy retries
    every 200 ms for 6 s, which holds a closing store), bounded connect
    and stall timeouts, and small objects sent as one PUT rather than a
    three-request multipart upload (``allow_delayed_open``)."""
    import pyarrow.fs as pafs

    try:
        kw = dict(fs.__reduce__()[1][0])
    except (AttributeError, IndexError, TypeError):
        return fs
    proxy = kw.get("proxy_options") or {}
    if not proxy.get("host"):
        kw["proxy_options"] = None
    for key in ("connect_timeout", "request_timeout"):
        if kw.get(key) is not None and kw[key] < 0:
            kw[key] = None
    kw["connect_timeout"] = kw.get("connect_timeout") or S3_CONNECT_TIMEOUT_S
    kw["request_timeout"] = kw.get("request_timeout") or S3_REQUEST_TIMEOUT_S
    kw["allow_delayed_open"] = True
    kw["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=2)
    for key in ("role_arn", "session_name", "external_id", "tls_ca_file_path"):
        if kw.get(key) == "":
            kw.pop(key)
    try:
        return pafs.S3FileSystem(**kw)
    except (TypeError, ValueError, OSError):
        return fs  # (another pyarrow's options: keep what from_uri made)


def check_target(target: Any) -> None:
    """ConfigError unless ``target`` has the shape ``archive=`` takes
    (nothing is contacted)."""
    if isinstance(target, str):
        if "://" not in target:
            raise ConfigError(f"archive must be a URI with a scheme (s3://, gs://, file://), not "
                              f"{redact(target)!r}")
        return
    if isinstance(target, tuple) and len(target) == 2 and isinstance(target[1], str):
        import pyarrow.fs as pafs

        if isinstance(target[0], pafs.FileSystem):
            return
    raise ConfigError("archive must be a URI or a (pyarrow.fs.FileSystem, prefix) pair")

