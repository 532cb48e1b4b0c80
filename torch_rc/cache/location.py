"""Which store a cache location means, opened once per process: a ``redis://`` URL is a
:class:`~torch_rc.cache.redis_store.RedisStore`, anything else a SQLite file
(:class:`~torch_rc.cache.store.SQLiteStore`)."""

from __future__ import annotations

import logging
import threading

from torch_rc.cache.interface import TuningStore
from torch_rc.cache.store import SQLiteStore
from torch_rc.errors import CacheError

__all__ = ["forget_open_stores", "make_store", "open_store", "persistent_store", "store_for"]

logger = logging.getLogger("torch_rc.cache.store")

_OPEN: dict[str, TuningStore | CacheError] = {}
_OPEN_LOCK = threading.Lock()


def make_store(location: str) -> TuningStore:
    """A new store object for ``location``: a ``redis://`` URL (RedisStore) or a SQLite file path.
    Most callers want :func:`store_for` (one object per location per process, so that a store
    that runs in memory is the same memory for everyone in the process).

    Raises:
        CacheError: the store cannot be used at all (unreachable server, newer schema, a cache
            directory other users can write).
    """
    if location.startswith(("redis://", "rediss://", "unix://")):
        # Lazy: the redis client is imported only by processes that use a shared server.
        from torch_rc.cache.redis_store import RedisStore

        return RedisStore(location)
    return SQLiteStore(location)


def store_for(location: str) -> TuningStore:
    """The process's store for ``location``, opened once (compiles, imports, warm-up and the CLI
    all share it: a bundle imported into a read-only location's in-memory copy is what the
    compiles read).

    Raises:
        CacheError: the store cannot be used at all (the same error for every later call).
    """
    with _OPEN_LOCK:
        if location not in _OPEN:
            try:
                _OPEN[location] = make_store(location)
            except CacheError as exc:
                _OPEN[location] = exc
        opened = _OPEN[location]
    if isinstance(opened, CacheError):
        raise opened
    return opened


def persistent_store(location: str, purpose: str) -> TuningStore:
    """:func:`store_for`, for work whose point is what it writes (tuning, warm-up, imports).

    Raises:
        CacheError: the store cannot be used, or runs in memory (a read-only location): the
            work would report success and lose ``purpose``.
    """
    store = store_for(location)
    if store.degraded:
        raise CacheError(
            f"{store.degraded}, so {purpose} would be lost; point cache_dir "
            "(TORCH_RC_CACHE_DIR) at a writable directory"
        )
    return store


def open_store(location: str) -> TuningStore | None:
    """:func:`store_for`, or None when the store cannot be used at all, in which case the caller
    compiles without a cache (a warning says why, once)."""
    with _OPEN_LOCK:
        first = location not in _OPEN
    try:
        return store_for(location)
    except CacheError as exc:
        if first:
            logger.warning("torch_rc: %s; compiling without the cache", exc)
        return None


def forget_open_stores() -> None:
    """Close and forget every store :func:`store_for` opened (tests; a process that moves its
    cache)."""
    with _OPEN_LOCK:
        for opened in _OPEN.values():
            if not isinstance(opened, CacheError):
                opened.close()
        _OPEN.clear()
