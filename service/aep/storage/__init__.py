"""Event stores behind one interface (EventStore), one module per backend."""

from __future__ import annotations

from aep.settings import DatabaseSettings, StoreType
from aep.storage.base import EventStore, StoreError, WriteResult

__all__ = ["EventStore", "StoreError", "WriteResult", "create_store"]


def create_store(settings: DatabaseSettings, *, worker_count: int) -> EventStore:
    """The store database.type selects, not yet opened."""
    if settings.type is StoreType.FILE:
        from aep.storage.file import FileStore

        return FileStore(settings.file, writer_count=worker_count)
    if settings.type is StoreType.REDIS:
        from aep.storage.redis import RedisStore

        return RedisStore(
            settings.redis,
            connect_timeout=settings.connect_timeout,
            operation_timeout=settings.operation_timeout,
        )
    from aep.storage.mongodb import MongoStore

    return MongoStore(
        settings.mongodb,
        connect_timeout=settings.connect_timeout,
        operation_timeout=settings.operation_timeout,
    )
