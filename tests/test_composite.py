"""Pasting the reposed person onto the inpainted background."""

import numpy as np
import pytest
from PIL import Image

from oneposetrans.composite import carries_alpha, composite, cover, feathered
from oneposetrans.errors import BadInputError
from oneposetrans.profiles import REFERENCE


def _person(size=(160, 240), alpha=True):
    pixels = np.zeros((size[1], size[0], 4), np.uint8)
    pixels[..., :3] = (200, 30, 30)
    pixels[60:200, 40:120, 3] = 255
    pixels[50:60, 40:120, 3] = 128  # a soft edge, as the LayerDiffuse matte has
    image = Image.fromarray(pixels, "RGBA")
    return image if alpha else image.convert("RGB")


def test_layerdiffuse_alpha_is_used_on_a_non_square_frame():
    background = Image.new("RGB", (400, 300), (0, 0, 255))
    result = np.asarray(composite(_person(), background), np.int32)
    assert result.shape == (240, 160, 3)
    assert tuple(result[100, 80]) == (200, 30, 30)  # opaque person
    assert tuple(result[10, 10]) == (0, 0, 255)  # background where alpha is 0
    half = 128 / 255
    expected = np.array([200, 30, 30]) * half + np.array([0, 0, 255]) * (1 - half)
    assert np.abs(result[55, 80] - expected).max() <= 0.5  # a soft edge blends


def test_mask_is_feathered_inwards_only():
    mask = np.zeros((100, 100), np.uint8)
    mask[20:80, 20:80] = 255
    alpha = feathered(mask, 3)
    assert (alpha[mask == 0] == 0).all()  # nothing outside the person: no black fringe
    assert alpha[50, 50] == 1.0 and 0.3 < alpha[20, 50] < 0.7


def test_foreground_without_alpha_needs_a_mask():
    with pytest.raises(BadInputError, match="no alpha channel and no mask"):
        composite(_person(alpha=False), Image.new("RGB", (10, 10)))
    mask = np.zeros((240, 160), np.uint8)
    mask[60:200, 40:120] = 255
    result = np.asarray(composite(_person(alpha=False), Image.new("RGB", (50, 50), (0, 255, 0)), mask))
    assert tuple(result[100, 80]) == (200, 30, 30) and tuple(result[5, 5]) == (0, 255, 0)


def test_reference_paste_is_the_published_hard_cut_on_a_stretched_background():
    mask = np.zeros((240, 160), np.uint8)
    mask[60:200, 40:120] = 255
    background = Image.new("RGB", (1024, 1024), (0, 255, 0))
    result = np.asarray(composite(_person(alpha=False), background, mask, profile=REFERENCE))
    assert result.shape == (240, 160, 3)
    assert set(map(tuple, result.reshape(-1, 3))) == {(200, 30, 30), (0, 255, 0)}


def test_background_cover_keeps_aspect_and_fills_the_frame():
    stripes = np.zeros((100, 400, 3), np.uint8)
    stripes[:, :200] = 255
    fitted = cover(Image.fromarray(stripes), (100, 100))
    assert fitted.size == (100, 100)
    row = np.asarray(fitted)[50, :, 0]
    assert row[:45].min() == 255 and row[55:].max() == 0  # the centre, not a squashed whole


def test_alpha_detection():
    assert carries_alpha(_person())
    assert not carries_alpha(Image.new("RGBA", (4, 4), (1, 2, 3, 255)))
    assert not carries_alpha(Image.new("RGB", (4, 4)))
