"""The joint canvas: four tiles in a 2x2 grid, and how each scenario fills it.

Tiles are placed top-left, top-right, bottom-left, bottom-right, as in the published code.
Cross-view attention splits the canvas into its quadrants at every UNet resolution, down to 1/64 of the
pixels, so a tile's sides must be multiples of 64: a picture of another size is fitted into the
tile (aspect ratio kept) and padded, and the pad is recorded so that the generated tile is cut
back to the picture's frame. The published code resized (distorting) instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from oneposetrans.errors import BadInputError

TILES = 4
ALIGN = 64
MODES = ("t1", "t2", "multi-target", "multi-source")
"""``t1``: [src, -, -, -] with the target pose on the three empty tiles (the paper's default);
``t2``: [src, src, src, -]; ``multi-target``: [src, -, ...] with up to 3 different target poses;
``multi-source``: [v1, ..., vK, -] with K <= 3 views of the person and one target pose."""


@dataclass(frozen=True)
class TileFrame:
    """Where a picture sits inside its tile: scaled to ``size`` and pasted at ``offset``."""

    tile: tuple[int, int]
    size: tuple[int, int]
    offset: tuple[int, int]


def tile_size(width: int, height: int, long_side: int = 512) -> tuple[int, int]:
    """A tile for pictures of ``width`` x ``height``: the long side ``long_side``, the short side
    the picture's proportion rounded up to a multiple of 64 (so the pad stays small)."""
    if long_side % ALIGN:
        raise BadInputError(f"tile side {long_side}: must be a multiple of {ALIGN}")
    scale = long_side / max(width, height)
    short = int(np.ceil(min(width, height) * scale / ALIGN)) * ALIGN
    return (long_side, short) if width >= height else (short, long_side)


def fitted_size(size: tuple[int, int], tile: tuple[int, int]) -> tuple[int, int]:
    """The size a picture of ``size`` takes inside ``tile`` with its aspect ratio kept."""
    scale = min(tile[0] / size[0], tile[1] / size[1])
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def fit(picture: Image.Image, tile: tuple[int, int], fill: int = 0) -> tuple[Image.Image, TileFrame]:
    """``picture`` scaled to fit ``tile`` with its aspect ratio, centred, padded with ``fill``."""
    size = fitted_size(picture.size, tile)
    offset = ((tile[0] - size[0]) // 2, (tile[1] - size[1]) // 2)
    canvas = Image.new(picture.mode, tile, fill if picture.mode == "L" else (fill,) * len(picture.getbands()))
    canvas.paste(picture.resize(size, Image.BICUBIC), offset)
    return canvas, TileFrame(tile, size, offset)


def unfit(tile_image: Image.Image, frame: TileFrame, size: tuple[int, int]) -> Image.Image:
    """The pad undone: the picture's part of a tile, at ``size``."""
    left, top = frame.offset
    crop = tile_image.crop((left, top, left + frame.size[0], top + frame.size[1]))
    return crop if crop.size == size else crop.resize(size, Image.BICUBIC)


def join(tiles: list[Image.Image]) -> Image.Image:
    """Four tiles of one size -> the 2x2 canvas."""
    if len(tiles) != TILES or len({t.size for t in tiles}) != 1:
        raise ValueError("a canvas takes four tiles of one size")
    width, height = tiles[0].size
    canvas = Image.new(tiles[0].mode, (2 * width, 2 * height))
    for index, tile in enumerate(tiles):
        canvas.paste(tile, ((index % 2) * width, (index // 2) * height))
    return canvas


def split(canvas: Image.Image) -> list[Image.Image]:
    """The 2x2 canvas -> its four tiles, in canvas order."""
    width, height = canvas.width // 2, canvas.height // 2
    return [canvas.crop(((i % 2) * width, (i // 2) * height, (i % 2 + 1) * width, (i // 2 + 1) * height)) for i in range(TILES)]


@dataclass
class Layout:
    """How a mode fills the canvas: which source (index) or None on each tile, which pose on
    each tile (``"source:i"`` or ``"target:j"``), and which tiles are the results to keep."""

    sources: list[int | None]
    poses: list[str]
    results: list[int]

    @property
    def flags(self) -> list[int]:
        """1 on a given tile, 0 on a tile to generate (the ILC flag map)."""
        return [0 if source is None else 1 for source in self.sources]


def layout(mode: str, sources: int, targets: int) -> Layout:
    """The tiles of ``mode`` for ``sources`` views and ``targets`` poses: the paper's T1 and T2,
    and its multi-target and multi-view scenarios."""
    if sources < 1 or targets < 1:
        raise BadInputError("IMAGPose needs at least one source photo and one target pose")
    if mode == "t1":
        _count(mode, sources, 1, targets, 1)
        return Layout([0, None, None, None], ["source:0", "target:0", "target:0", "target:0"], [1])
    if mode == "t2":
        _count(mode, sources, 1, targets, 1)
        return Layout([0, 0, 0, None], ["source:0"] * 3 + ["target:0"], [3])
    if mode == "multi-target":
        _count(mode, sources, 1, targets, 3)
        poses = ["source:0"] + [f"target:{j}" for j in range(targets)] + ["target:0"] * (3 - targets)
        return Layout([0, None, None, None], poses, list(range(1, 1 + targets)))
    if mode == "multi-source":
        _count(mode, sources, 3, targets, 1)
        filled = [i for i in range(sources)] + [0] * (3 - sources)
        return Layout([*filled, None], [f"source:{i}" for i in filled] + ["target:0"], [3])
    raise BadInputError(f"unknown IMAGPose mode {mode!r}; choose from {', '.join(MODES)}")


def _count(mode: str, sources: int, most_sources: int, targets: int, most_targets: int) -> None:
    if sources > most_sources:
        raise BadInputError(f"mode {mode}: at most {most_sources} source photo(s), got {sources}")
    if targets > most_targets:
        raise BadInputError(f"mode {mode}: at most {most_targets} target pose(s), got {targets}")
