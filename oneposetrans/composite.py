"""Compositing: the reposed person onto the source's inpainted background.

The published paste (tool_utils.py --mode paste) is a hard cut, ``fg + bg * (1 - [mask == 255])``, of a
person-on-black image re-segmented with SAM, and needs foreground and background of the same
size, which breaks on WPose (README *Profiles*). The default profile instead:

* takes the LayerDiffuse alpha when the generated image carries one (it is the model's own
  matte, with hair and soft edges), the segmentation mask otherwise;
* feathers a hard mask inwards only, so no dark fringe from the black surround leaks in;
* fits the background to the foreground's frame by scaling it to cover and cropping the centre,
  so non-square results keep an undistorted background.

The reference profile keeps the hard cut and stretches the background to the foreground's size
(where the published code stopped with a size error).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from oneposetrans.errors import BadInputError
from oneposetrans.image_io import load_image, save_image
from oneposetrans.profiles import DEFAULT, Profile
from oneposetrans.results import StageLog, split_pair_name
from oneposetrans.stages import Stage

# Inward feather of hard masks, as a fraction of the shorter side (about 2 px at 512).
FEATHER_FRACTION = 0.004


def cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale ``image`` to cover ``size`` keeping its aspect ratio, then crop the centre."""
    width, height = size
    scale = max(width / image.width, height / image.height)
    scaled = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.BICUBIC)
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def carries_alpha(image: Image.Image) -> bool:
    """Whether an image has a usable matte (an alpha channel that is not everywhere opaque)."""
    return image.mode == "RGBA" and np.asarray(image)[..., 3].min() < 255


def feathered(mask: np.ndarray, radius: float) -> np.ndarray:
    """A 0/255 mask as 0..1 alpha, softened inside the person only."""
    hard = (mask > 127).astype(np.float32)
    if radius <= 0:
        return hard
    blurred = np.asarray(Image.fromarray((hard * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0
    # The blur is 0.5 on the outline and 1 deep inside: the outline ends half transparent.
    return hard * np.clip(2.0 * blurred - 0.5, 0.0, 1.0)


def composite(
    foreground: Image.Image,
    background: Image.Image,
    mask: Image.Image | np.ndarray | None = None,
    profile: Profile = DEFAULT,
) -> Image.Image:
    """The person of ``foreground`` over ``background``, in the foreground's frame.

    The background is stretched or covers the frame (``profile.paste_background``). With
    ``profile.paste_matte == "mask"`` the published hard cut by ``mask`` (person = 255); with
    ``"alpha"`` the foreground's alpha, or ``mask`` feathered when it carries none.
    """
    size = foreground.size
    colours = np.asarray(foreground.convert("RGB"), np.float32)
    if profile.paste_background == "stretch":
        back = np.asarray(background.convert("RGB").resize(size, Image.BICUBIC), np.float32)
    else:
        back = np.asarray(cover(background.convert("RGB"), size), np.float32)
    if profile.paste_matte == "mask":
        if mask is None:
            raise BadInputError("the published paste needs a mask")
        hard = _mask_array(mask, size) == 255
        return Image.fromarray(np.where(hard[..., None], colours, back).astype(np.uint8), "RGB")
    if carries_alpha(foreground):
        alpha = np.asarray(foreground, np.float32)[..., 3] / 255.0
    elif mask is not None:
        alpha = feathered(_mask_array(mask, size), FEATHER_FRACTION * min(size))
    else:
        raise BadInputError("the foreground has no alpha channel and no mask was given")
    blended = colours * alpha[..., None] + back * (1.0 - alpha[..., None])
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB")


def _mask_array(mask: Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if isinstance(mask, np.ndarray):
        mask = Image.fromarray(mask.max(axis=2) if mask.ndim == 3 else mask)
    mask = mask.convert("L")
    if mask.size != size:
        mask = mask.resize(size, Image.NEAREST)
    return np.asarray(mask)


class PasteStage(Stage[Path]):
    """Paste every ``<source>_to_<target>.png`` onto ``<background_folder>/<source>.png``
    (steps 8 and 11): by its alpha when it carries one, else (and always where the session's
    profile pastes by the mask, as published) by its mask of the same name in ``mask_folder``."""

    name = "paste"

    def __init__(self, background_folder: Path, mask_folder: Path | None, output_folder: Path, overwrite: bool = False):
        self.background_folder = background_folder
        self.mask_folder = mask_folder
        self.output_folder = output_folder
        self.overwrite = overwrite

    def outputs(self, case: Path) -> list[Path]:
        return [self.output_folder / f"{case.stem}.png"]

    def run(self, case: Path, session, log: StageLog) -> None:
        source, _ = split_pair_name(case.name)
        background_file = self.background_folder / f"{source}.png"
        if not background_file.exists():
            raise BadInputError(f"{case}: no background {background_file} (run inpaint first)")
        foreground = load_image(case, "RGBA")
        mask_file = self.mask_folder / case.name if self.mask_folder is not None else None
        needs_mask = session.profile.paste_matte == "mask" or not carries_alpha(foreground)
        if needs_mask and (mask_file is None or not mask_file.exists()):
            raise BadInputError(f"{case}: no alpha channel and no mask {mask_file} (run segment --mode rgb first)")
        mask = load_image(mask_file, "L") if needs_mask else None
        result = composite(foreground, load_image(background_file, "RGB"), mask, session.profile)
        save_image(result, self.outputs(case)[0])
        log.ok(case.stem, size=list(result.size), matte="mask" if mask is not None else "alpha")
