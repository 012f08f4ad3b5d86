import os
from pathlib import Path

import pytest

# Before any test imports the hub libraries: every test is offline.
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A private cache folder, so that --smoke runs in tests never touch the user's cache.
    ``ONEPOSETRANS_TEST_CACHE`` names a lasting one instead, to reuse the kit between runs."""
    lasting = os.environ.get("ONEPOSETRANS_TEST_CACHE")
    if lasting:
        Path(lasting).mkdir(parents=True, exist_ok=True)
        return Path(lasting)
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_models(cache_dir) -> Path:
    """The tiny kit, built once per test session where --smoke subprocesses will find it."""
    os.environ["ONEPOSETRANS_CACHE"] = str(cache_dir)
    from oneposetrans.testing import cached_tiny_models

    return cached_tiny_models()


@pytest.fixture
def cli_env(tiny_models) -> dict:
    return {**os.environ, "ONEPOSETRANS_CACHE": os.environ["ONEPOSETRANS_CACHE"], "PYTHONUNBUFFERED": "1"}
