"""The one source of boot files, shared by the TFTP and HTTP servers.

Two kinds of files sit behind :meth:`BootFileSource.open`:

* **static** files under a boot root, with strict path safety: no ``..``,
  absolute paths are taken relative to the root, symlinks may not leave the
  root, no NUL or control characters, bounded name lengths, regular files only;
* **generated** files from async *providers* registered by pattern (an iPXE
  script or GRUB config rendered per client). Identical concurrent requests are
  rendered once (single-flight) and the result is kept for a short TTL, so a
  firmware's "probe, then fetch" costs one render.

Nothing here blocks the event loop: path resolution, ``open`` and reads run in
the executor, and file contents are served from a shared, bounded cache of
chunks, so 1,000 clients fetching the same program read the disk once.

For HTTP, a static :class:`BootFile` exposes ``path`` (the opened file's real
path) so the response can use ``sendfile``; any file can be streamed with
:meth:`BootFile.iter_bytes`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import os
import stat
import time
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fleetboot.errors import FleetbootError

log = logging.getLogger(__name__)

MAX_PATH_LENGTH = 1024
MAX_COMPONENT_LENGTH = 255
CHUNK_SIZE = 1 << 20


class BootFileError(FleetbootError):
    """A boot file cannot be served (TFTP error 0 / HTTP 500 unless a subclass says more)."""


class BootFileNotFound(BootFileError):
    """No such file or generator output (TFTP error 1 / HTTP 404)."""


class BootPathRefused(BootFileError):
    """The name is unsafe or points outside the boot root (TFTP error 2 / HTTP 403)."""


@dataclass(frozen=True)
class RequestContext:
    """Who asks for a file; providers render per client from this."""

    client_ip: str
    client_mac: str | None = None
    protocol: str = "tftp"  # "tftp" | "http"

    @property
    def client_key(self) -> str:
        return self.client_mac or self.client_ip


def normalize_boot_path(raw: str, max_length: int = MAX_PATH_LENGTH) -> str:
    """Validate a requested name and return it relative to the root ("a/b/c").

    Leading slashes are dropped (absolute names are taken relative to the
    root); ``.`` and empty components are dropped; ``..``, NUL and other
    control characters, and overlong names are refused. Pure.
    """
    if len(raw.encode("utf-8", "surrogatepass")) > max_length:
        raise BootPathRefused(f"file name longer than {max_length} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise BootPathRefused("file name contains NUL or control characters")
    parts = []
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise BootPathRefused("file name contains '..'")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_LENGTH:
            raise BootPathRefused(f"a file name component is longer than {MAX_COMPONENT_LENGTH}")
        parts.append(part)
    if not parts:
        raise BootPathRefused("file name names the boot root itself")
    return "/".join(parts)


class BlockReader(Protocol):
    """What a transfer needs from a file: a non-blocking view and an async load."""

    def view(self, offset: int, length: int) -> bytes | memoryview | None: ...

    async def load(self, offset: int, length: int) -> None: ...

    def prefetch(self, offset: int) -> None: ...


# --- files --------------------------------------------------------------------------


class BootFile(ABC):
    """An opened boot file of known size. Immutable content for its lifetime."""

    name: str
    size: int
    mtime: float
    etag: str
    path: Path | None = None  # on-disk file (static files only), for sendfile
    generated: bool = False

    @abstractmethod
    def view(self, offset: int, length: int) -> bytes | memoryview | None:
        """The bytes at ``offset`` if they are in memory now, else None (never blocks)."""

    @abstractmethod
    async def load(self, offset: int, length: int) -> None:
        """Make :meth:`view` succeed for this range (reads in the executor)."""

    def prefetch(self, offset: int) -> None:  # noqa: B027 - optional hook
        """Hint that ``offset`` will be needed soon; default: nothing."""

    def reader(self) -> BlockReader:
        """A handle for one sequential reader; use it for many small reads."""
        return self

    async def read(self, offset: int, length: int) -> bytes:
        return await self._read(self.reader(), offset, length)

    async def _read(self, reader: BlockReader, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        data = reader.view(offset, length)
        if data is None:
            await reader.load(offset, length)
            data = reader.view(offset, length)
        if data is None:
            raise BootFileError(f"{self.name}: could not read {length} bytes at {offset}")
        return bytes(data)

    async def iter_bytes(self, start: int = 0, end: int | None = None,
                         chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
        """The bytes of ``[start, end)``, in pieces (HTTP bodies, Range requests)."""
        stop = self.size if end is None else min(end, self.size)
        reader = self.reader()  # one reader: it holds its chunks across pieces
        offset = start
        while offset < stop:
            reader.prefetch(offset + chunk)
            piece = await self._read(reader, offset, min(chunk, stop - offset))
            yield piece
            offset += len(piece)


class MemoryBootFile(BootFile):
    """Generated (or otherwise in-memory) content."""

    def __init__(self, name: str, data: bytes, generated: bool = True) -> None:
        self.name = name
        self.data = data
        self._view = memoryview(data)
        self.size = len(data)
        self.mtime = time.time()
        self.etag = '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'
        self.generated = generated

    def view(self, offset: int, length: int) -> memoryview:
        return self._view[offset : offset + length]

    async def load(self, offset: int, length: int) -> None:
        return None


class ChunkCache:
    """A bounded LRU of file chunks shared by all open files; loads are single-flight."""

    def __init__(self, max_bytes: int = 256 << 20, chunk_size: int = CHUNK_SIZE) -> None:
        self.max_bytes = max_bytes
        self.chunk_size = chunk_size
        self._chunks: OrderedDict[tuple[Hashable, int], bytes] = OrderedDict()
        self._loading: dict[tuple[Hashable, int], asyncio.Task[bytes]] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def peek(self, key: tuple[Hashable, int]) -> bytes | None:
        chunk = self._chunks.get(key)
        if chunk is not None:
            self._chunks.move_to_end(key)
            self.hits += 1
        return chunk

    async def get(self, key: tuple[Hashable, int], fd: int, expected: int) -> bytes:
        chunk = self.peek(key)
        if chunk is not None:
            return chunk
        task = self._loading.get(key)
        if task is None:
            # A task of its own: a cancelled reader must not cancel the others' load.
            self.misses += 1
            task = asyncio.get_running_loop().create_task(self._load(key, fd, expected))
            self._loading[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    async def _load(self, key: tuple[Hashable, int], fd: int, expected: int) -> bytes:
        chunk = await asyncio.get_running_loop().run_in_executor(
            None, os.pread, fd, expected, key[1] * self.chunk_size)
        if len(chunk) != expected:
            raise BootFileError("a boot file changed size while being served; "
                                "publish new versions as new files")
        self._store(key, chunk)
        return chunk

    def _done(self, key: tuple[Hashable, int], task: asyncio.Task[bytes]) -> None:
        self._loading.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here; awaiting readers re-raise it

    def _store(self, key: tuple[Hashable, int], chunk: bytes) -> None:
        self._chunks[key] = chunk
        self.bytes += len(chunk)
        while self.bytes > self.max_bytes and len(self._chunks) > 1:
            _, old = self._chunks.popitem(last=False)
            self.bytes -= len(old)


class DiskBootFile(BootFile):
    """A static file opened once; reads go through the shared :class:`ChunkCache`."""

    def __init__(self, name: str, path: Path, fd: int, st: os.stat_result,
                 cache: ChunkCache) -> None:
        self.name = name
        self.path = path
        self.fd = fd
        self.size = st.st_size
        self.mtime = st.st_mtime
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self.etag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
        self._cache = cache
        self._csize = cache.chunk_size
        self._prefetching: set[int] = set()
        self._shared = DiskReader(self)
        # Close the descriptor when the last session holding this file is done.
        self._finalizer = weakref.finalize(self, os.close, fd)

    def _chunk_len(self, index: int) -> int:
        return max(0, min(self._csize, self.size - index * self._csize))

    def reader(self) -> DiskReader:
        return DiskReader(self)

    def view(self, offset: int, length: int) -> bytes | memoryview | None:
        return self._shared.view(offset, length)

    async def load(self, offset: int, length: int) -> None:
        await self._shared.load(offset, length)

    def prefetch(self, offset: int) -> None:
        index = offset // self._csize
        if (index * self._csize >= self.size or index in self._prefetching
                or self._cache.peek((self.identity, index)) is not None):
            return
        self._prefetching.add(index)
        task = asyncio.get_running_loop().create_task(self._prefetch(index))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _prefetch(self, index: int) -> None:
        try:
            await self._cache.get((self.identity, index), self.fd, self._chunk_len(index))
        finally:
            self._prefetching.discard(index)


class DiskReader:
    """One reader's handle on a :class:`DiskBootFile` (a TFTP session, an HTTP body).

    It holds the few chunks it used last, so a busy shared cache cannot evict
    them between :meth:`load` and :meth:`view`, and the per-block fast path is
    a dict lookup and a memoryview slice.
    """

    __slots__ = ("_cache", "_csize", "_cur_index", "_cur_view", "_file", "_held", "_key")

    def __init__(self, file: DiskBootFile) -> None:
        self._file = file
        self._cache = file._cache
        self._csize = file._csize
        self._key = file.identity
        self._held: dict[int, bytes] = {}
        self._cur_index = -1
        self._cur_view = memoryview(b"")

    def _chunk(self, index: int) -> bytes | None:
        chunk = self._held.get(index)
        if chunk is None:
            chunk = self._cache.peek((self._key, index))
            if chunk is not None:
                self._hold(index, chunk)
        return chunk

    def _hold(self, index: int, chunk: bytes) -> None:
        if len(self._held) >= 3:
            del self._held[min(self._held)]  # readers move forward: drop the oldest
        self._held[index] = chunk

    def view(self, offset: int, length: int) -> bytes | memoryview | None:
        index = offset // self._csize
        start = offset - index * self._csize
        if index == self._cur_index and start + length <= self._csize:
            return self._cur_view[start : start + length]  # the per-block fast path
        return self._view(offset, length)

    def _view(self, offset: int, length: int) -> bytes | memoryview | None:
        if length <= 0:
            return b""
        first, last = offset // self._csize, (offset + length - 1) // self._csize
        chunk = self._chunk(first)
        if chunk is None:
            return None
        start = offset - first * self._csize
        if first == last:
            self._cur_index, self._cur_view = first, memoryview(chunk)
            return self._cur_view[start : start + length]
        rest = self._chunk(last)  # a block straddling two chunks: rare, copy it
        if rest is None:
            return None
        return chunk[start:] + rest[: length - (len(chunk) - start)]

    async def load(self, offset: int, length: int) -> None:
        first = offset // self._csize
        last = (offset + max(length, 1) - 1) // self._csize
        for index in range(first, last + 1):
            if index not in self._held:
                chunk = await self._cache.get((self._key, index), self._file.fd,
                                              self._file._chunk_len(index))
                self._hold(index, chunk)

    def prefetch(self, offset: int) -> None:
        self._file.prefetch(offset)


# --- generated files ------------------------------------------------------------------

Render = Callable[[str, RequestContext], Awaitable[bytes | str | None]]
KeyFn = Callable[[str, RequestContext], Hashable]


def _default_key(name: str, ctx: RequestContext) -> Hashable:
    return (name, ctx.client_key)


@dataclass
class Provider:
    """Renders files whose name matches ``pattern`` (exact, or a glob with ``*``/``?``).

    ``render`` returns the content, or None to let the next provider or the
    boot root answer. Requests with the same ``key`` (default: name and
    client) share one render while it runs and for ``ttl`` seconds after.
    """

    pattern: str
    render: Render
    key: KeyFn = _default_key
    ttl: float = 2.0
    _is_glob: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._is_glob = any(c in self.pattern for c in "*?[")

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern) if self._is_glob else name == self.pattern


# --- the source ---------------------------------------------------------------------


@dataclass
class SourceStats:
    static_opens: int = 0
    static_cache_hits: int = 0
    renders: int = 0
    render_shared: int = 0  # requests answered by another request's render or its TTL copy
    refused: int = 0
    not_found: int = 0


class BootFileSource:
    """Static files under ``root`` plus generated files; see the module docstring."""

    def __init__(self, root: str | os.PathLike[str] | None, *,
                 max_path_length: int = MAX_PATH_LENGTH, cache_bytes: int = 256 << 20,
                 chunk_size: int = CHUNK_SIZE, stat_ttl: float = 1.0,
                 max_open_files: int = 512) -> None:
        self.root = Path(os.path.realpath(root)) if root is not None else None
        self.max_path_length = max_path_length
        self.stat_ttl = stat_ttl
        self.max_open_files = max_open_files
        self.cache = ChunkCache(cache_bytes, chunk_size)
        self.providers: list[Provider] = []
        self.stats = SourceStats()
        self._static: OrderedDict[str, tuple[float, DiskBootFile]] = OrderedDict()
        self._rendering: dict[Hashable, asyncio.Task[bytes | None]] = {}
        self._rendered: OrderedDict[Hashable, tuple[float, bytes | None]] = OrderedDict()

    def add_provider(self, pattern: str, render: Render, *, key: KeyFn | None = None,
                     ttl: float = 2.0) -> Provider:
        """Serve names matching ``pattern`` from ``render`` (checked before the root)."""
        provider = Provider(pattern, render, key or _default_key, ttl)
        self.providers.append(provider)
        return provider

    async def open(self, raw_name: str, ctx: RequestContext) -> BootFile:
        """The file for ``raw_name``; raises BootPathRefused / BootFileNotFound / BootFileError."""
        try:
            name = normalize_boot_path(self._strip_root(raw_name), self.max_path_length)
        except BootPathRefused:
            self.stats.refused += 1
            raise
        for provider in self.providers:
            if provider.matches(name):
                data = await self._render(provider, name, ctx)
                if data is not None:
                    return MemoryBootFile(name, data)
        if self.root is None:
            self.stats.not_found += 1
            raise BootFileNotFound(f"{name}: no such boot file")
        return await self._open_static(name)

    def _strip_root(self, raw: str) -> str:
        # Configs often name files by their full path on the server; accept those.
        if self.root is not None:
            prefix = str(self.root).rstrip("/") + "/"
            if raw.startswith(prefix):
                return raw[len(prefix):]
        return raw

    # --- generated ----------------------------------------------------------------

    async def _render(self, provider: Provider, name: str, ctx: RequestContext) -> bytes | None:
        key = (provider.pattern, provider.key(name, ctx))
        cached = self._rendered.get(key)
        if cached is not None and cached[0] > time.monotonic():
            self.stats.render_shared += 1
            return cached[1]
        task = self._rendering.get(key)
        if task is None:
            # Its own task, so one impatient client cannot cancel the others' render.
            self.stats.renders += 1
            render = self._render_once(provider, name, ctx, key)
            task = asyncio.get_running_loop().create_task(render)
            self._rendering[key] = task
            task.add_done_callback(lambda t: self._render_done(key, t))
        else:
            self.stats.render_shared += 1
        return await asyncio.shield(task)

    async def _render_once(self, provider: Provider, name: str, ctx: RequestContext,
                           key: Hashable) -> bytes | None:
        data = await self._call_provider(provider, name, ctx)
        if provider.ttl > 0:
            self._remember(key, data, time.monotonic() + provider.ttl)
        return data

    def _render_done(self, key: Hashable, task: asyncio.Task[bytes | None]) -> None:
        self._rendering.pop(key, None)
        if not task.cancelled():
            task.exception()

    async def _call_provider(self, provider: Provider, name: str,
                             ctx: RequestContext) -> bytes | None:
        try:
            result = await provider.render(name, ctx)
        except FleetbootError:
            raise
        except Exception as exc:
            log.exception("boot file provider %r failed for %s", provider.pattern, name)
            raise BootFileError(f"{name}: generating it failed ({exc.__class__.__name__})") from exc
        if isinstance(result, str):
            return result.encode("utf-8")
        return result

    def _remember(self, key: Hashable, data: bytes | None, expires: float) -> None:
        self._rendered[key] = (expires, data)
        self._rendered.move_to_end(key)
        while len(self._rendered) > 4096:
            self._rendered.popitem(last=False)

    # --- static -------------------------------------------------------------------

    async def _open_static(self, name: str) -> DiskBootFile:
        now = time.monotonic()
        cached = self._static.get(name)
        if cached is not None and now - cached[0] < self.stat_ttl:
            self.stats.static_cache_hits += 1
            self._static.move_to_end(name)
            return cached[1]
        try:
            opened = await asyncio.get_running_loop().run_in_executor(
                None, self._open_in_thread, name, cached[1] if cached else None)
        except BootPathRefused:
            self.stats.refused += 1
            raise
        except BootFileNotFound:
            self.stats.not_found += 1
            raise
        self._static[name] = (time.monotonic(), opened)
        self._static.move_to_end(name)
        while len(self._static) > self.max_open_files:
            self._static.popitem(last=False)
        return opened

    def _open_in_thread(self, name: str, previous: DiskBootFile | None) -> DiskBootFile:
        assert self.root is not None
        real = os.path.realpath(os.path.join(self.root, name))
        self._check_inside(real, name)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise BootFileNotFound(f"{name}: no such boot file") from None
        except PermissionError:
            raise BootPathRefused(f"{name}: not readable by the server") from None
        except OSError as exc:
            raise BootFileNotFound(f"{name}: cannot open ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BootFileNotFound(f"{name}: not a regular file")
            # The descriptor is what we serve: check *it* is inside the root, which
            # closes the race of a directory swapped for a symlink after realpath.
            self._check_inside(os.readlink(f"/proc/self/fd/{fd}"), name)
            if previous is not None and previous.identity == (
                    st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
                os.close(fd)
                return previous  # unchanged: keep its descriptor and cached chunks
            return DiskBootFile(name, Path(real), fd, st, self.cache)
        except BaseException:
            os.close(fd)
            raise

    def _check_inside(self, real: str, name: str) -> None:
        root = str(self.root)
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            raise BootPathRefused(f"{name}: resolves outside the boot root")
