"""Event stores behind one interface (EventStore), one module per backend.

STORE_BACKENDS maps each database.type to its backend class. A backend's
module is imported only when its type is selected: the network stores'
client libraries take long to import, and a deployment uses one or a few.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from aep.settings import ConfigError, DatabaseSettings, StoreType
from aep.storage.base import EventStore, StoreBackend, StoreError, WriteResult

__all__ = [
    "STORE_BACKENDS",
    "EventStore",
    "StoreBackend",
    "StoreError",
    "UnknownStoreTypeError",
    "WriteResult",
    "backend_class",
    "create_store",
    "create_stores",
]


class UnknownStoreTypeError(ConfigError):
    """database.type names no backend; the message lists the ones there are."""


def _file_store() -> type[StoreBackend]:
    from aep.storage.file import FileStore

    return FileStore


def _redis_store() -> type[StoreBackend]:
    from aep.storage.redis import RedisStore

    return RedisStore


def _mongo_store() -> type[StoreBackend]:
    from aep.storage.mongodb import MongoStore

    return MongoStore


def _kafka_store() -> type[StoreBackend]:
    from aep.storage.kafka import KafkaStore

    return KafkaStore


# database.type -> the backend class (loaded on first use).
STORE_BACKENDS: Mapping[str, Callable[[], type[StoreBackend]]] = MappingProxyType(
    {
        StoreType.FILE.value: _file_store,
        StoreType.REDIS.value: _redis_store,
        StoreType.MONGODB.value: _mongo_store,
        StoreType.KAFKA.value: _kafka_store,
    }
)


def backend_class(store_type: str) -> type[StoreBackend]:
    """The class of the store database.type names; refuses a name it does not know."""
    load = STORE_BACKENDS.get(store_type)
    if load is None:
        raise UnknownStoreTypeError(
            f"database.type: {store_type!r} is not a store type; "
            f"known: {', '.join(sorted(STORE_BACKENDS))}"
        )
    return load()


def create_store(
    settings: DatabaseSettings, store_type: str | None = None, *, worker_count: int
) -> EventStore:
    """The store of `store_type` (default: the one database.type names), not yet opened."""
    if store_type is None:
        if len(settings.type) != 1:
            listed = ",".join(str(name) for name in settings.type)
            raise ConfigError(f"database.type lists several stores ({listed}); name one")
        store_type = settings.type[0]
    return backend_class(store_type).from_settings(settings, worker_count=worker_count)


def create_stores(settings: DatabaseSettings, *, worker_count: int) -> list[EventStore]:
    """The stores database.type lists, in its order, not yet opened."""
    return [
        create_store(settings, store_type, worker_count=worker_count)
        for store_type in settings.type
    ]
