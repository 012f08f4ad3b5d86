"""`prepare-deepfashion`: the DeepFashion split with the published renaming."""

from __future__ import annotations

from pathlib import Path

from oneposetrans.datasets import prepare_deepfashion


def add(commands) -> None:
    prepare = commands.add_parser(
        "prepare-deepfashion",
        help="DeepFashion train/test split with the published file renaming (generate_fashion_datasets.py)",
        description="Run from the folder that holds ./fashion (MEN/, WOMEN/, train.lst, test.lst).",
    )
    prepare.add_argument("--root", type=Path, default=Path("."), help="folder that holds ./fashion")
    prepare.add_argument("--results", type=Path, help="also write the test images as PNG into RESULTS/images")
    prepare.set_defaults(
        handler=lambda arguments: _prepare(arguments.root, arguments.results)
    )


def _prepare(root: Path, results: Path | None) -> int:
    counts = prepare_deepfashion(root, results)
    return 1 if counts["missing"] else 0
