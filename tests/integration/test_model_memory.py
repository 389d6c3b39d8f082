"""Bounded model memory (issue 12, item 3): a loader keeps at most PREDQ_MODEL_CACHE_SIZE
versions, and an old version is released once the slot moved on and no batch holds it.
Real Postgres; the artifacts are tracked with weak references."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from modelstore.errors import ConfigError
from modelstore.loader import ModelLoader
from modelstore.settings import Settings
from tests.support import models
from workers.slot import ModelSlot


def test_promoting_through_versions_releases_the_old_ones(pg_url: str, tmp_path: Path) -> None:
    slot = ModelSlot(ModelLoader(pg_url, tmp_path, cache_dir=tmp_path / "cache",
                                 memory_cache_size=2))
    alive: dict[str, weakref.ref[object]] = {}
    held = None
    for i in range(1, 7):
        models.register(pg_url, f"v{i}", offset=float(i))
        assert slot.refresh()  # swapped to the new production version
        current = slot.ensure_loaded()
        assert current.version == f"v{i}"
        alive[current.version] = weakref.ref(current.loaded.artifact)
        if i == 4:
            held = current  # a batch still predicting with v4
        del current
    gc.collect()
    assert slot.loader.cached_models == 2
    live = sorted(v for v, ref in alive.items() if ref() is not None)
    assert live == ["v4", "v5", "v6"], live  # v6 served, v5 cached, v4 held by the batch
    del held
    gc.collect()
    assert sorted(v for v, ref in alive.items() if ref() is not None) == ["v5", "v6"]


def test_model_cache_size_setting() -> None:
    assert Settings.from_env({}).model_cache_size == 2
    assert Settings.from_env({"PREDQ_MODEL_CACHE_SIZE": "5"}).model_cache_size == 5
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="PREDQ_MODEL_CACHE_SIZE"):
            Settings.from_env({"PREDQ_MODEL_CACHE_SIZE": bad})
