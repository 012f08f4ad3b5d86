"""A synthetic DeepFashion-format mini dataset: 3 people, 2 views each, 6 pairs.

The layout is DeepFashion In-shop's ``fashion/{MEN,WOMEN}/<category>/id_<n>/<NN>_<k>_<view>.jpg``
with ``train.lst``/``test.lst``, DPTN's pairs CSV (``from,to``) and 18-keypoint annotation CSV
(``name:keypoints_y:keypoints_x`` in the 256x176 frame), and a captions file in the published
``index/name/text`` format. People are orange-red figures on grey, which the tiny kit's detector
calls "human".
"""

from __future__ import annotations

import json
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
