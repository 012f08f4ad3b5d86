"""Background inpainting: LaMa through onnxruntime and SDXL inpainting through diffusers."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from oneposetrans.errors import BadInputError
from oneposetrans.profiles import REFERENCE, profile_named
from oneposetrans.inpaint import (
    DIFFUSION_STRENGTH,
    PUBLISHED_LAMA,
    PUBLISHED_LAMA_SIDE,
    DiffusionInpainter,
    LamaInpainter,
    binary_mask,
)
from oneposetrans.testing.tiny import TINY_LAMA_SIDE


def _photo_and_hole(size=(300, 200)):
    photo = Image.fromarray(data.astronaut()).resize(size)
    hole = np.zeros((size[1], size[0]), np.uint8)
    hole[50:150, 100:180] = 255
    return photo, hole


def test_lama_fills_the_hole_and_returns_the_source_size(tiny_models):
    photo, hole = _photo_and_hole()
    lama = LamaInpainter(tiny_models, "cpu")
    assert lama.size == (TINY_LAMA_SIDE, TINY_LAMA_SIDE)  # read from the model, not assumed
    filled = lama(photo, hole)
    assert filled.size == photo.size and filled.mode == "RGB"
    before, after = np.asarray(photo), np.asarray(filled)
    assert (after[hole == 0] == before[hole == 0]).all()  # untouched outside the hole
    assert np.abs(after[hole > 0].astype(int) - before[hole > 0]).mean() > 5


def _models_without_published_lama(tiny_models, tmp_path):
    """The tiny kit with only the registry's smaller LaMa export."""
    models = tmp_path / "models"
    models.mkdir()
    for entry in tiny_models.iterdir():
        if entry.name != "lama":
            (models / entry.name).symlink_to(entry)
    (models / "lama").mkdir()
    (models / "lama" / "lama_fp32.onnx").symlink_to(tiny_models / "lama" / "lama_fp32.onnx")
    return models


def test_lama_reference_profile_refuses_an_export_of_another_size(tiny_models, tmp_path):
    with pytest.raises(BadInputError, match=f"{TINY_LAMA_SIDE}x{TINY_LAMA_SIDE} LaMa export; --profile reference needs"):
        LamaInpainter(_models_without_published_lama(tiny_models, tmp_path), "cpu", profile=REFERENCE)


def test_lama_reference_profile_uses_the_1024_export_and_keeps_its_size(tiny_models):
    photo, hole = _photo_and_hole()
    lama = LamaInpainter(tiny_models, "cpu", profile=REFERENCE)
    assert lama.path.name == PUBLISHED_LAMA
    filled = lama(photo, hole)
    assert filled.size == (PUBLISHED_LAMA_SIDE, PUBLISHED_LAMA_SIDE)


@pytest.mark.parametrize("profile", ["default", "reference"])
def test_lama_inputs_are_the_published_bicubic_resizes(tiny_models, profile):
    """Image: PIL bicubic to the model size, in 0..1. Mask: the 0/255 mask resized bicubic, hole where > 0."""
    photo, hole = _photo_and_hole()
    lama = LamaInpainter(tiny_models, "cpu", profile=profile_named(profile))
    seen = {}
    run = lama.session.run
    lama.session = type("Spy", (), {"run": lambda self, names, feed: seen.update(feed) or run(names, feed)})()
    lama(photo, Image.fromarray(hole))
    size = lama.size
    expected_image = np.asarray(photo.resize(size, Image.BICUBIC), np.float32).transpose(2, 0, 1) / 255.0
    expected_mask = np.asarray(Image.fromarray(hole).resize(size, Image.BICUBIC)) > 0
    assert np.array_equal(seen["image"][0], expected_image)
    assert np.array_equal(seen["mask"][0, 0], expected_mask.astype(np.float32))
    # Bicubic ringing widens the hole past the nearest-neighbour outline, as published.
    assert expected_mask.sum() > (np.asarray(Image.fromarray(hole).resize(size, Image.NEAREST)) > 0).sum()


def test_masks_of_any_format_binarise_the_same():
    hole = np.zeros((4, 4), np.uint8)
    hole[1, 1] = 255
    three = Image.fromarray(np.repeat(hole[..., None], 3, axis=2))
    assert (binary_mask(three) == binary_mask(Image.fromarray(hole))).all()
    assert binary_mask(hole).sum() == 1


@pytest.mark.parametrize("profile", ["default", "reference"])
def test_diffusion_inpainting_size_and_strength_by_profile(tiny_models, profile, monkeypatch):
    """Default: native size, strength 1.0. Reference: the published call gave no size, so diffusers'
    default frame comes back (1024x1024 with SDXL's config), strength 0.6, seed 0."""
    photo, hole = _photo_and_hole((300, 203))
    inpainter = DiffusionInpainter(tiny_models, "cpu", profile=profile_named(profile))
    calls = []
    pipeline_call = type(inpainter.pipeline).__call__
    monkeypatch.setattr(type(inpainter.pipeline), "__call__", lambda self, **kw: calls.append(kw) or pipeline_call(self, **kw))
    filled = inpainter(photo, hole)
    assert calls[0]["strength"] == DIFFUSION_STRENGTH[profile_named(profile).diffusion_inpaint] == (1.0 if profile == "default" else 0.6)
    assert calls[0]["generator"].initial_seed() == 0
    if profile == "default":
        assert filled.size == photo.size
        assert (calls[0]["width"], calls[0]["height"]) == (296, 200)
    else:
        assert "width" not in calls[0] and "height" not in calls[0]
        pipe = inpainter.pipeline
        side = pipe.unet.config.sample_size * pipe.vae_scale_factor
        assert filled.size == (side, side)
