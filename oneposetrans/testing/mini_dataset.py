"""A synthetic DeepFashion-format mini dataset: 3 people, 2 views each, 6 pairs (the tests'),
and a training split of 3 outfits (the tests' and ``imagpose train --smoke``'s).

The layout is DeepFashion In-shop's ``fashion/{MEN,WOMEN}/<category>/id_<n>/<NN>_<k>_<view>.jpg``
with ``train.lst``/``test.lst``, DPTN's pairs CSV (``from,to``) and 18-keypoint annotation CSV
(``name:keypoints_y:keypoints_x`` in the 256x176 frame), and a captions file in the published
``index/name/text`` format. People are orange-red figures on grey, which the tiny kit's detector
calls "human".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from oneposetrans.datasets import deepfashion_flat_name

PEOPLE = [("WOMEN", "Dresses", "id_00000001"), ("MEN", "Jackets_Vests", "id_00000002"), ("WOMEN", "Blouses_Shirts", "id_00000003")]
VIEWS = ("01_1_front", "02_2_side")
# A standing figure in the 256x176 frame (y, x); -1 marks a joint out of view.
STANDING = [(30, 88), (60, 88), (60, 60), (100, 50), (135, 45), (60, 116), (100, 126), (135, 131),
            (140, 72), (190, 70), (240, 70), (140, 104), (190, 106), (240, 106), (25, 82), (25, 94), (28, 76), (28, 100)]


def _photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.full((256, 176, 3), 120, np.uint8) + rng.integers(0, 8, (256, 176, 3), dtype=np.uint8)
    left = 40 + 10 * (seed % 3)
    pixels[40:240, left : left + 90] = (230, 110, 40)
    pixels[15:45, left + 30 : left + 60] = (220, 150, 100)
    return Image.fromarray(pixels)


def make_mini_deepfashion(root: Path) -> dict[str, Path]:
    """Write the dataset under ``root``; returns the paths of its list files."""
    fashion = root / "fashion"
    names, lines, keypoint_lines, captions = [], [], ["name:keypoints_y:keypoints_x"], []
    for index, (gender, category, person) in enumerate(PEOPLE):
        folder = fashion / gender / category / person
        folder.mkdir(parents=True, exist_ok=True)
        pair = []
        for view_index, view in enumerate(VIEWS):
            _photo(index * 2 + view_index).save(folder / f"{view}.jpg", quality=95)
            name = deepfashion_flat_name(f"fashion/{gender}/{category}/{person}/{view}.jpg")
            lines.append(name)
            pair.append(name)
            shift = 6 * view_index
            ys = [y for y, _ in STANDING]
            xs = [x + shift if x >= 0 else -1 for _, x in STANDING]
            keypoint_lines.append(f"{name}:{json.dumps(ys)}:{json.dumps(xs)}")
            captions.append(f"{len(captions):5d}/{name}/A {'woman' if gender == 'WOMEN' else 'man'} with face, orange {category.lower()}")
        names.append(pair)
    (fashion / "train.lst").write_text("")
    (fashion / "test.lst").write_text("\n".join(lines) + "\n")
    pairs = root / "fasion-resize-pairs-test.csv"
    pairs.write_text("from,to\n" + "".join(f"{a},{b}\n{b},{a}\n" for a, b in names))
    keypoints = root / "fasion-resize-annotation-test.csv"
    keypoints.write_text("\n".join(keypoint_lines) + "\n")
    descriptions = root / "fashion_descriptions.txt"
    descriptions.write_text("\n".join(captions) + "\n")
    return {"pairs": pairs, "keypoints": keypoints, "captions": descriptions}


TRAINING_OUTFITS = [("WOMEN", "Dresses", "id_00000011", "01", 4), ("MEN", "Denim", "id_00000012", "03", 5), ("WOMEN", "Skirts", "id_00000013", "02", 2)]
TRAINING_VIEWS = ("1_front", "2_side", "3_back", "4_full", "7_additional")


def make_mini_deepfashion_training(root: Path) -> Path:
    """The training split in DeepFashion's raw layout (``train.lst`` and the train keypoint CSV):
    two outfits with 4 and 5 views, one with 2 views (too few for a 4-tile canvas). Returns the
    keypoints CSV; ``prepare-deepfashion`` then copies the photos into ``fashion/train_highres``."""
    fashion = root / "fashion"
    names, keypoint_lines = [], ["name:keypoints_y:keypoints_x"]
    for index, (gender, category, person, outfit, views) in enumerate(TRAINING_OUTFITS):
        folder = fashion / gender / category / person
        folder.mkdir(parents=True, exist_ok=True)
        for view_index, view in enumerate(TRAINING_VIEWS[:views]):
            _photo(10 + index * 5 + view_index).save(folder / f"{outfit}_{view}.jpg", quality=95)
            name = deepfashion_flat_name(f"fashion/{gender}/{category}/{person}/{outfit}_{view}.jpg")
            names.append(name)
            ys = [y for y, _ in STANDING]
            xs = [x + 4 * view_index if x >= 0 else -1 for _, x in STANDING]
            keypoint_lines.append(f"{name}:{json.dumps(ys)}:{json.dumps(xs)}")
    (fashion / "train.lst").write_text("\n".join(names) + "\n")
    if not (fashion / "test.lst").exists():
        (fashion / "test.lst").write_text("")
    keypoints = root / "fasion-resize-annotation-train.csv"
    keypoints.write_text("\n".join(keypoint_lines) + "\n")
    return keypoints


TINY_TRAINING = {"tile_long_side": 64, "workers": 0, "batch_size": 1, "log_every": 5}
"""IMAGPose training settings the tiny kit trains at: its tokenizer takes 8x8 latent patches,
so 64-pixel tiles (a 128x128 canvas) train."""


TEST_OUTFITS = ("fashionMENDenimid0000001203", "fashionWOMENDressesid0000001101")
"""The outfits of the training split that :func:`add_mini_test_split` also lists for testing."""
TEST_PAIRS = (
    (f"{TEST_OUTFITS[0]}_1front", f"{TEST_OUTFITS[0]}_2side"),
    (f"{TEST_OUTFITS[0]}_1front", f"{TEST_OUTFITS[0]}_3back"),
    (f"{TEST_OUTFITS[1]}_1front", f"{TEST_OUTFITS[1]}_4full"),
)


def add_mini_test_split(root: Path, train_keypoints: Path) -> None:
    """A test split over :func:`make_mini_deepfashion_training`'s photos, as ``imagpose evaluate
    --data`` reads it: ``test.lst`` naming two outfits' views, their keypoints CSV and three pairs
    (two from one source, for the multi-target scenario). Call before ``prepare-deepfashion``."""
    train = (root / "fashion" / "train.lst").read_text().split()
    (root / "fashion" / "test.lst").write_text("\n".join(n for n in train if n.startswith(TEST_OUTFITS)) + "\n")
    shutil.copy(train_keypoints, root / "fasion-resize-annotation-test.csv")
    (root / "fasion-resize-pairs-test.csv").write_text("from,to\n" + "".join(f"{a}.jpg,{b}.jpg\n" for a, b in TEST_PAIRS))


def prepared_mini_deepfashion(root: Path) -> Path:
    """The training split and its test split, through ``prepare-deepfashion``, as ``imagpose
    train --data`` and ``imagpose evaluate --data`` read them."""
    from oneposetrans.datasets import prepare_deepfashion

    add_mini_test_split(root, make_mini_deepfashion_training(root))
    prepare_deepfashion(root, echo=lambda line: None)
    return root


def cached_mini_deepfashion() -> Path:
    """The prepared mini dataset beside the tiny kit, built once: ``imagpose train --smoke``'s and
    ``imagpose evaluate --smoke``'s data when no ``--data`` is given. Built under a temporary name
    and renamed into place."""
    import os
    import tempfile

    from oneposetrans import datasets
    from oneposetrans.testing.tiny import kit_version, tiny_cache_dir

    # Named by what builds it, as the kit is: an edited builder gets a fresh folder.
    version = kit_version((Path(__file__), Path(datasets.__file__)))
    final = tiny_cache_dir().parent / f"mini-deepfashion-v{version}"
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        prepared_mini_deepfashion(staging)
        try:
            os.rename(staging, final)
        except OSError:  # another process got there first
            shutil.rmtree(staging, ignore_errors=True)
    return final
