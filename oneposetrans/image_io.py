"""Reading and writing images the same way in every stage.

Reading applies EXIF orientation and converts every PIL mode (paletted, grayscale, 16-bit,
CMYK, with or without alpha) to the mode the caller asks for; any file that is not a usable
image becomes a one-line :class:`BadInputError` naming the file. Writing is atomic.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from oneposetrans.errors import BadInputError
from oneposetrans.results import atomic_path

# Refuse decompression bombs outright instead of warning: 16k x 16k is far beyond any photo
# this method can use, and a malicious file must not exhaust memory.
MAX_PIXELS = 16384 * 16384
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def _to_8bit(image: Image.Image) -> Image.Image:
    """Map high-bit-depth single-channel images onto 0..255 without wrapping around."""
    array = np.asarray(image)
    if image.mode.startswith("I;16") or (image.mode == "I" and array.max(initial=0) > 255):
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() <= 65535 else float(array.max())
        array = np.clip(array.astype(np.float64) / peak * 255.0 + 0.5, 0, 255)
    elif image.mode == "F":
        top = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255)
    return Image.fromarray(array.astype(np.uint8), mode="L")


def convert_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL image to ``mode`` ("RGB", "RGBA" or "L"), keeping transparency when present."""
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in {"CMYK", "YCbCr", "LAB", "HSV", "1"}:
        image = image.convert("RGB" if mode != "L" else "L")
    if image.mode == "PA":
        image = image.convert("RGBA")
    return image if image.mode == mode else image.convert(mode)


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Open an image file for processing; never modifies the file.

    RGBA to RGB drops alpha without compositing, as PIL and the published code do; callers
    that need the alpha channel ask for "RGBA".
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadInputError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    raise BadInputError(
                        f"{path}: image of {opened.width}x{opened.height} pixels exceeds the "
                        f"{MAX_PIXELS} pixel limit"
                    )
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except BadInputError:
        raise
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInputError(f"{path}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise BadInputError(f"{path}: not an image file (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInputError(f"{path}: image too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadInputError(f"{path}: corrupt or truncated image ({error})") from None
    return convert_mode(image, mode)


def save_image(image: Image.Image | np.ndarray, path: str | os.PathLike) -> Path:
    """Write an image atomically; the format follows the suffix (PNG for results)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path
