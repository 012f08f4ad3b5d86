import hashlib

import numpy as np
import pytest
from PIL import Image

from oneposetrans.errors import BadInputError
from oneposetrans.image_io import load_image, save_image


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (8, 8), 100),
        lambda: Image.new("1", (8, 8), 1),
        lambda: Image.new("LA", (8, 8), (100, 50)),
        lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)),
        lambda: Image.new("RGBA", (8, 8), (10, 20, 30, 0)),
        lambda: Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)),
    ],
)
def test_every_mode_becomes_rgb(tmp_path, make):
    path = tmp_path / "x.png" if make().mode != "CMYK" else tmp_path / "x.jpg"
    make().save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (8, 8)


def test_sixteen_bit_is_scaled_not_wrapped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(path)
    assert np.asarray(load_image(path, "L")).min() == 255


def test_paletted_transparency_is_kept_for_rgba(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0] * 256)
    image.info["transparency"] = 0
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    assert np.asarray(load_image(path, "RGBA"))[..., 3].max() == 0


@pytest.mark.parametrize(
    "content,reason",
    [(b"", "empty file"), (b"hello, not an image", "not an image"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "")],
)
def test_bad_files_give_one_line_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(BadInputError) as error:
        load_image(path)
    message = str(error.value)
    assert str(path) in message and reason in message and "\n" not in message


def test_source_is_never_modified(tmp_path):
    path = tmp_path / "src.png"
    Image.new("RGBA", (16, 16), (1, 2, 3, 4)).save(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    save_image(load_image(path), tmp_path / "copy.png")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
