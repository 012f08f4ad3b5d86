import os
from pathlib import Path

import pytest

# Before any test imports the hub libraries: every test is offline.
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The workers share the cores: one thread each, in this process and the commands it starts
    # (two workers' spinning OpenMP threads on the same cores slow both).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


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


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """An in-process ``--smoke`` command sets torch to one thread; later tests get theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def astronaut_tree(tiny_models, tmp_path_factory) -> Path:
    """A results tree after the chain's first stages on the bundled photo: the source, its
    segmentation, caption and LoRA. Tests that are about later stages start from a copy of it
    (:func:`seeded_tree`) instead of fine-tuning again."""
    import shutil

    from oneposetrans.cli import main
    from oneposetrans.pose import BUNDLED_POSES

    root = tmp_path_factory.mktemp("astronaut") / "tree"
    flags = ["--smoke", "--device", "cpu", "--no-composite", "--quiet", "--steps", "1", "--resolution", "64"]
    assert main(["repose", "--out", str(root), "--pose", str(BUNDLED_POSES[0]), *flags]) == 0
    for later in ("reposed_result", "poses", "logs"):
        shutil.rmtree(root / later)
    (root / "contact_sheet.png").unlink()
    return root


def seeded_tree(astronaut_tree: Path, destination: Path) -> Path:
    import shutil

    shutil.copytree(astronaut_tree, destination)
    return destination
