"""Dataset adapters: the pair lists and caption files of DeepFashion and WPose.

DeepFashion and WPose differ only here. Formats (the published repository's lists and scripts; README *Datasets*):

* DeepFashion pairs CSV (DPTN, 8,570 pairs): header ``from,to``, one pair per line.
* OnePoseTrans DeepFashion subset (1,763 pairs): lines ``idx/src.jpg/tgt.jpg``.
* WPose pairs (2,304): lines ``src.png tgt.png``.
* Captions (original format): lines ``index/name/text``; only the first two ``/`` separate
  fields, so a ``/`` inside the text is kept.

Every name is checked with :func:`safe_component`; errors name the file and the line.
"""

from __future__ import annotations

import os
from pathlib import Path

from oneposetrans.errors import BadInputError, OnePoseTransError
from oneposetrans.image_io import load_image, save_image
from oneposetrans.profiles import DEFAULT, Profile
from oneposetrans.results import atomic_path, is_done, ResultsTree, safe_component

DATASETS = ("deepfashion", "wpose")
"""The datasets a run adapts to: they differ only in where a target pose comes from (step 5)."""


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except UnicodeDecodeError as error:
        raise BadInputError(f"{path}: not UTF-8 text ({error})") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _name(path: Path, number: int, value: str) -> str:
    try:
        return safe_component(value.strip(), "image name")
    except OnePoseTransError as error:
        raise BadInputError(f"{path}:{number}: {error}") from None


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(source, target) image names from any of the three pair-list formats."""
    path = Path(path)
    lines = _lines(path)
    if not lines:
        raise BadInputError(f"{path}: no pairs")
    pairs = []
    for number, line in lines:
        if number == lines[0][0] and line.replace(" ", "").lower() == "from,to":
            continue
        if "," in line:
            fields = line.split(",")
        elif "/" in line:
            fields = line.split("/")[1:]
        else:
            fields = line.split()
        if len(fields) != 2 or not all(field.strip() for field in fields):
            raise BadInputError(
                f"{path}:{number}: expected 'from,to', 'idx/src/tgt' or 'src tgt', got {line[:80]!r}"
            )
        pairs.append((_name(path, number, fields[0]), _name(path, number, fields[1])))
    return pairs


def read_caption_lines(path: str | os.PathLike, profile: Profile = DEFAULT) -> list[tuple[str, str]]:
    """(image name, text) pairs of the original ``index/name/text`` captions file; the text ends
    at its next slash where ``profile.caption_text`` says so (the published ``split('/')[2]``)."""
    path = Path(path)
    entries = []
    for number, line in _lines(path):
        fields = line.split("/", 2)
        if len(fields) != 3 or not fields[2].strip():
            raise BadInputError(f"{path}:{number}: expected 'index/name/text', got {line[:80]!r}")
        # Published: the line right-stripped, then split('/')[2], untouched.
        text = fields[2].split("/")[0] if profile.caption_text == "to the next slash" else fields[2].strip()
        entries.append((_name(path, number, fields[1]), text))
    return entries


def read_captions(path: str | os.PathLike, profile: Profile = DEFAULT) -> dict[str, str]:
    """Captions keyed by image stem, from the original ``index/name/text`` file."""
    return {Path(name).stem: text for name, text in read_caption_lines(path, profile)}


def unique_sources(pairs: list[tuple[str, str]]) -> list[str]:
    """Source names in first-seen order: the images that need a LoRA."""
    return list(dict.fromkeys(source for source, _ in pairs))


# --- DeepFashion In-shop (img_highres) ---------------------------------------------------

DEEPFASHION_GENDERS = ("MEN", "WOMEN")
KEYPOINTS_FRAME = (256, 176)  # (height, width) of the PATN/GFLA/DPTN/CFLD annotations


def deepfashion_flat_name(relative: str) -> str:
    """The published flattening of ``fashion/<GENDER>/<category>/id_<n>/<NN>_<k>_<view>.jpg``.

    The id folder loses its underscores, the file name keeps only its first one, and all parts
    are concatenated: ``fashion/MEN/Jackets_Vests/id_00006530/04_1_front.jpg`` becomes
    ``fashionMENJackets_Vestsid0000653004_1front.jpg`` (GFLA -> DPTN -> CFLD -> OnePoseTrans).
    """
    parts = relative.replace("\\", "/").split("/")
    if len(parts) != 5:
        raise ValueError(f"{relative}: expected fashion/<gender>/<category>/<id>/<file>")
    parts[3] = parts[3].replace("_", "")
    head, *rest = parts[4].split("_")
    parts[4] = head + "_" + "".join(rest) if rest else head
    return "".join(parts)


def _read_list(path: Path) -> set[str]:
    return {line for _, line in _lines(path) if line.endswith(".jpg")}


def prepare_deepfashion(
    root: str | os.PathLike = ".", results: str | os.PathLike | None = None, echo=print
) -> dict[str, int]:
    """Copy the DeepFashion images named in ``fashion/train.lst`` / ``test.lst`` into
    ``fashion/train_highres`` / ``test_highres`` under their flattened names, in one pass.

    With ``results``, the test images are also written as PNG to ``results/images/<stem>.png``,
    which is where every later stage reads sources (the original left this step undocumented).
    Files already in place are kept; source files are never modified.
    """
    fashion = Path(root) / "fashion"
    wanted = {"train": _read_list(fashion / "train.lst"), "test": _read_list(fashion / "test.lst")}
    outputs = {split: fashion / f"{split}_highres" for split in wanted}
    for folder in outputs.values():
        folder.mkdir(exist_ok=True)
    tree = ResultsTree(results) if results is not None else None
    counts = {"train_found": 0, "test_found": 0, "copied": 0, "already_present": 0, "pngs_written": 0}
    found: set[str] = set()
    for gender in DEEPFASHION_GENDERS:
        for path in sorted((fashion / gender).rglob("*")):
            if not path.is_file() or path.suffix.lower() not in {".jpg", ".jpeg", ".png"}:
                continue
            relative = path.relative_to(Path(root)).as_posix()
            try:
                name = deepfashion_flat_name(relative)
            except ValueError:
                continue
            for split, names in wanted.items():
                if name not in names:
                    continue
                found.add(name)
                counts[f"{split}_found"] += 1
                target = outputs[split] / name
                if is_done(target):
                    counts["already_present"] += 1
                else:
                    with atomic_path(target) as tmp:
                        tmp.write_bytes(path.read_bytes())
                    counts["copied"] += 1
                if split == "test" and tree is not None:
                    png = tree.file("images", f"{Path(name).stem}.png")
                    if not is_done(png):
                        save_image(load_image(path), png)
                        counts["pngs_written"] += 1
    missing = sorted((wanted["train"] | wanted["test"]) - found)
    counts["missing"] = len(missing)
    echo(
        f"train: {counts['train_found']} of {len(wanted['train'])} found; test: {counts['test_found']} of "
        f"{len(wanted['test'])} found; {counts['copied']} copied, {counts['already_present']} already present"
        + (f", {counts['pngs_written']} PNGs written to {tree.folder('images')}" if tree else "")
    )
    if missing:
        echo(f"{len(missing)} listed images not found under {fashion}, e.g. {', '.join(missing[:3])}")
    return counts


def read_keypoints_csv(path: str | os.PathLike) -> dict[str, "np.ndarray"]:
    """DeepFashion keypoints: ``name:keypoints_y:keypoints_x``, JSON lists of 18 ints in the
    256x176 frame, -1 = missing. Returns (18, 2) arrays of (x, y) with NaN for missing joints,
    keyed by image stem."""
    import json

    import numpy as np

    path = Path(path)
    lines = _lines(path)
    keypoints = {}
    for number, line in lines:
        if number == lines[0][0] and line.startswith("name:"):
            continue
        fields = line.split(":")
        try:
            if len(fields) != 3:
                raise ValueError("expected 'name:keypoints_y:keypoints_x'")
            ys, xs = json.loads(fields[1]), json.loads(fields[2])
            if len(ys) != 18 or len(xs) != 18:
                raise ValueError(f"expected 18 y and 18 x values, got {len(ys)} and {len(xs)}")
            points = np.array([xs, ys], dtype=np.float64).T
        except (ValueError, TypeError) as error:
            raise BadInputError(f"{path}:{number}: {error}") from None
        points[(points == -1).any(axis=1)] = np.nan
        keypoints[Path(_name(path, number, fields[0])).stem] = points
    return keypoints
