"""database.type -> store backend: every known type builds its store, any other fails loudly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aep.settings import ConfigError, DatabaseSettings, FileStoreSettings, StoreType
from aep.storage import STORE_BACKENDS, create_store


@pytest.mark.parametrize("store_type", list(StoreType))
def test_every_store_type_builds_its_own_backend(store_type: StoreType, tmp_path: Path) -> None:
    settings = DatabaseSettings(type=store_type, file=FileStoreSettings(dir=tmp_path))
    store = create_store(settings, worker_count=1)
    assert store.name == store_type.value


@pytest.mark.parametrize("name", ["kafkaa", "", "File", "mongodb "])
def test_an_unknown_store_type_is_refused_naming_the_known_ones(name: str) -> None:
    """Settings validation refuses these; code that builds settings without it
    (model_construct, a YAML-less caller) must not get some other store instead."""
    settings = DatabaseSettings.model_construct(type=(name,))  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as refused:
        create_store(settings, name, worker_count=1)
    message = str(refused.value)
    print(f"database.type {name!r}: {message}")
    assert message.startswith("database.type:")
    assert repr(name) in message
    for known in StoreType:
        assert known.value in message


def test_the_registry_knows_exactly_the_settings_store_types() -> None:
    assert set(STORE_BACKENDS) == {store_type.value for store_type in StoreType}


def test_a_backend_module_is_imported_only_when_its_type_is_selected(tmp_path: Path) -> None:
    """The network clients take long to import; a file-store server does not pay for them."""
    program = (
        "import sys\n"
        "from pathlib import Path\n"
        "from aep.settings import DatabaseSettings, FileStoreSettings\n"
        "from aep.storage import create_store\n"
        f"create_store(DatabaseSettings(file=FileStoreSettings(dir=Path({str(tmp_path)!r}))),"
        " worker_count=1)\n"
        "print(sorted(m for m in ('redis', 'pymongo', 'confluent_kafka', 'aep.storage.redis',"
        " 'aep.storage.mongodb', 'aep.storage.kafka') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
