"""Dataset adapters: the pair lists and caption files of DeepFashion and WPose.

DeepFashion and WPose differ only here. Formats (oneposetrans.md section 5):

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
from oneposetrans.results import safe_component


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


def read_captions(path: str | os.PathLike) -> dict[str, str]:
    """Captions keyed by image stem, from the original ``index/name/text`` file."""
    path = Path(path)
    captions = {}
    for number, line in _lines(path):
        fields = line.split("/", 2)
        if len(fields) != 3 or not fields[2].strip():
            raise BadInputError(f"{path}:{number}: expected 'index/name/text', got {line[:80]!r}")
        captions[Path(_name(path, number, fields[1])).stem] = fields[2].strip()
    return captions


def unique_sources(pairs: list[tuple[str, str]]) -> list[str]:
    """Source names in first-seen order: the images that need a LoRA."""
    return list(dict.fromkeys(source for source, _ in pairs))
