"""IMAGPose training data: joint canvases of one DeepFashion identity.

A sample is four photos of one identity (one outfit of one person: the flattened DeepFashion
name without its view, ``...id0000653004`` of ``...id0000653004_1front``, the published
preparation script's rule) laid on the 2x2 canvas; some tiles are masked (to generate), the
others are given. Every photo is fitted into its tile as inference fits it
(:func:`oneposetrans.imagpose.canvas.fit`: aspect kept, padded), and its pose is drawn by the
project's renderer from the dataset's keypoints at the fitted size, so training and sampling see
the same tiles and the same skeletons. A horizontal flip mirrors the keypoints and swaps their
left and right joints before drawing (the published code flipped the rendered skeleton, which
swapped the limbs' colours).

The profile decides the rest (README, *Profiles*):

* ``reference``, the published loader's draw: the 4 photos with replacement (not all four the
  same), each tile given with probability 1/2 (not all, not none), so 1, 2 and 3 masked tiles come
  in proportions 4:6:4 and a repeated photo is common; the FLC reference is one random given
  tile's photo before the flip, centre-cropped for the image encoder and, for the VAE, in [0, 1]
  as the published loader fed it.
* ``default``: 4 distinct photos, so a target is never also a given tile; 1-3 masked tiles with
  equal probability; every given tile is an FLC view, padded to a square for the image encoder,
  its VAE tokens from the masked canvas's latent in [-1, 1], as at inference.

Every sample is a pure function of (seed, index): the sampler's position is the training step,
so a resumed run draws exactly the samples an uninterrupted one would have.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from oneposetrans.errors import BadInputError
from oneposetrans.imagpose import canvas as joint
from oneposetrans.imagpose.pipeline_imagpose import encoder_pixels
from oneposetrans.pose import DEEPFASHION_FRAME, Keypoints, render_keypoints
from oneposetrans.profiles import DEFAULT, Profile

IMAGES_PER_SAMPLE = joint.TILES
MAX_VIEWS = joint.TILES - 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# OpenPose COCO-18: the joints that trade places when a person is mirrored.
MIRRORED_JOINTS = ((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17))


def identity_of(stem: str) -> str:
    """The outfit a flattened DeepFashion name shows: the name without its last ``_`` field."""
    return stem.rsplit("_", 1)[0]


def mirror_keypoints(points: np.ndarray, width: int) -> np.ndarray:
    """Keypoints of the horizontally flipped photo: x mirrored, left and right joints swapped."""
    mirrored = points.copy()
    mirrored[:, 0] = width - 1 - mirrored[:, 0]
    for right, left in MIRRORED_JOINTS:
        mirrored[[right, left]] = mirrored[[left, right]]
    return mirrored


def draw_pose(points: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """DeepFashion keypoints (the 256x176 frame) drawn as a pose map of ``size``: the size its
    photo takes in a tile, so that fitting the map into the tile does not resample it."""
    return render_keypoints(Keypoints(points[None], *DEEPFASHION_FRAME), size)


@dataclass(frozen=True)
class Identity:
    name: str
    images: tuple[Path, ...]


@dataclass(frozen=True)
class Draw:
    """The random choices of one sample."""

    identity: Identity
    images: tuple[int, ...]
    """Which of the identity's photos go on the four tiles."""
    masked: frozenset[int]
    """The tiles to generate."""
    flip: bool
    drop_image_tokens: bool
    drop_latent_tokens: bool
    reference_tile: int | None = None
    """The given tile whose photo is the one FLC view (the published draw), or None: every given tile."""


@dataclass(frozen=True)
class DataSettings:
    tile_long_side: int = 512
    masked_tiles: tuple[int, int] = (1, 3)
    flip: float = 0.5
    drop_image_tokens: float = 0.05
    drop_latent_tokens: float = 0.05
    drop_both: float = 0.05


class IdentityCanvases:
    """Training canvases from a folder of flattened DeepFashion photos and their keypoints
    (the ``name:keypoints_y:keypoints_x`` CSV in the 256x176 frame), drawn as ``profile`` says.

    Photos without keypoints and identities with too few photos (4, or 2 for the published
    draw, which repeats photos) are left out, and counted in :attr:`left_out`. ``sample(index)``
    returns numpy arrays (see :meth:`sample`).
    """

    def __init__(
        self, images: str | os.PathLike, keypoints: dict[str, np.ndarray], settings: DataSettings, seed: int, profile: Profile = DEFAULT
    ):
        images = Path(images)
        if not images.is_dir():
            raise BadInputError(f"{images}: no such folder of training images")
        self.settings = settings
        self.seed = seed
        self.keypoints = keypoints
        self.published_draw = profile.imagpose_draw == "with repetition"
        self.published_reference = profile.imagpose_flc_reference == "published"
        self.encoder_fit = "centre crop" if profile.imagpose_encoder_input == "published" else "padded"
        self.tile = joint.tile_size(*DEEPFASHION_FRAME, settings.tile_long_side)
        groups: dict[str, list[Path]] = {}
        no_keypoints = 0
        for path in sorted(images.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.stem not in keypoints or np.isnan(keypoints[path.stem]).all():
                no_keypoints += 1
                continue
            groups.setdefault(identity_of(path.stem), []).append(path)
        fewest = 2 if self.published_draw else IMAGES_PER_SAMPLE
        self.identities = [Identity(name, tuple(paths)) for name, paths in groups.items() if len(paths) >= fewest]
        self.left_out = {"photos without keypoints": no_keypoints, f"identities with fewer than {fewest} photos": len(groups) - len(self.identities)}
        if not self.identities:
            raise BadInputError(
                f"{images}: no identity has {fewest} photos with keypoints "
                f"({no_keypoints} photos without keypoints, {len(groups)} identities in all)"
            )

    def __len__(self) -> int:
        return len(self.identities)

    def _identity(self, index: int) -> Identity:
        # Each pass over the identities is its own permutation: every identity once per epoch.
        epoch, position = divmod(index, len(self.identities))
        order = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.identities))
        return self.identities[order[position]]

    def _tile(self, path: Path, flip: bool) -> tuple[Image.Image, Image.Image, Image.Image]:
        """(photo, photo fitted into the tile, its pose drawn at the same place)."""
        photo = Image.open(path).convert("RGB")
        points = self.keypoints[path.stem]
        if flip:
            photo = ImageOps.mirror(photo)
            points = mirror_keypoints(points, DEEPFASHION_FRAME[0])
        fitted, frame = joint.fit(photo, self.tile)
        pose = Image.new("RGB", self.tile)
        pose.paste(draw_pose(points, frame.size), frame.offset)
        return photo, fitted, pose

    def draw(self, index: int) -> Draw:
        """The choices of sample ``index``, a pure function of (seed, index)."""
        settings = self.settings
        rng = np.random.default_rng([self.seed, 2, index])
        identity = self._identity(index)
        if self.published_draw:
            images, masked = _published_draw(rng, len(identity.images))
        else:
            images = tuple(rng.choice(len(identity.images), IMAGES_PER_SAMPLE, replace=False).tolist())
            low, high = settings.masked_tiles
            masked = frozenset(rng.choice(joint.TILES, int(rng.integers(low, high + 1)), replace=False).tolist())
        flip = bool(rng.random() < settings.flip)
        # One draw splits into: image tokens dropped, latent tokens dropped, both, neither.
        draw = rng.random()
        image_only = settings.drop_image_tokens
        latent_only = image_only + settings.drop_latent_tokens
        both = latent_only + settings.drop_both
        reference_tile = None
        if self.published_reference:
            reference_tile = int(rng.choice(sorted(set(range(joint.TILES)) - masked)))
        return Draw(
            identity, images, masked, flip, draw < image_only or latent_only <= draw < both, image_only <= draw < both, reference_tile
        )

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """Sample ``index``:

        * ``canvas`` (3, 2h, 2w) float32 in [-1, 1]: the four photos, the target of the loss;
        * ``masked`` the same with the masked tiles black; ``flags`` (4,) 1 on given tiles;
        * ``pose`` (3, 2h, 2w) in [0, 1]: every tile's pose;
        * ``encoder_pixels`` (3, 3, 224, 224): the FLC views' photos for the image encoder (views
          beyond ``views`` repeat the first), ``view_tiles`` (3,) the tile of each view;
        * ``drop`` (2,) bools: the image-encoder and latent conditions dropped for guidance;
        * with the published FLC reference, ``reference`` (3, h, w) in [0, 1]: the one view's
          photo, unflipped, fitted into a tile, for its own VAE encoding.
        """
        draw = self.draw(index)
        tiles = [self._tile(draw.identity.images[i], draw.flip) for i in draw.images]
        black = Image.new("RGB", self.tile)
        given = [tile for tile in range(joint.TILES) if tile not in draw.masked]
        extra = {}
        if draw.reference_tile is None:
            views = given
            pixels = [encoder_pixels(tiles[tile][0], self.encoder_fit) for tile in given]
        else:
            views = [draw.reference_tile]
            # The tile holds the photo as flipped; mirroring it back is exact, and decodes nothing again.
            photo = tiles[draw.reference_tile][0]
            photo = ImageOps.mirror(photo) if draw.flip else photo
            pixels = [encoder_pixels(photo, self.encoder_fit)]
            extra["reference"] = _unit(joint.fit(photo, self.tile)[0])
        pixels += [pixels[0]] * (MAX_VIEWS - len(pixels))
        return {
            "canvas": _signed(joint.join([fitted for _, fitted, _ in tiles])),
            "masked": _signed(joint.join([black if tile in draw.masked else tiles[tile][1] for tile in range(joint.TILES)])),
            "pose": _unit(joint.join([pose for _, _, pose in tiles])),
            "flags": np.array([0.0 if tile in draw.masked else 1.0 for tile in range(joint.TILES)], np.float32),
            "encoder_pixels": np.stack(pixels),
            "view_tiles": np.array(views + [views[0]] * (MAX_VIEWS - len(views)), np.int64),
            "views": np.int64(len(views)),
            "drop": np.array([draw.drop_image_tokens, draw.drop_latent_tokens]),
            **extra,
        }


def _published_draw(rng: np.random.Generator, photos: int) -> tuple[tuple[int, ...], frozenset[int]]:
    """The published loader's choices: 4 photos with replacement, redrawn while all four are the
    same; each tile given with probability 1/2, redrawn while none or all are."""
    while True:
        images = tuple(rng.integers(photos, size=IMAGES_PER_SAMPLE).tolist())
        if len(set(images)) > 1:
            break
    while True:
        given = rng.integers(2, size=joint.TILES)
        if 0 < given.sum() < joint.TILES:
            return images, frozenset(np.flatnonzero(given == 0).tolist())


def _unit(image: Image.Image) -> np.ndarray:
    return (np.asarray(image, np.float32) / 255.0).transpose(2, 0, 1).copy()


def _signed(image: Image.Image) -> np.ndarray:
    return _unit(image) * 2 - 1
