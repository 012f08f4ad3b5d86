"""Background inpainting: LaMa through onnxruntime and SDXL inpainting through diffusers."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from oneposetrans.inpaint import DIFFUSION_STRENGTH, DiffusionInpainter, LamaInpainter, binary_mask
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


def test_lama_reference_profile_keeps_the_model_size(tiny_models):
    photo, hole = _photo_and_hole()
    filled = LamaInpainter(tiny_models, "cpu", profile="reference")(photo, hole)
    assert filled.size == (TINY_LAMA_SIDE, TINY_LAMA_SIDE)


def test_masks_of_any_format_binarise_the_same():
    hole = np.zeros((4, 4), np.uint8)
    hole[1, 1] = 255
    three = Image.fromarray(np.repeat(hole[..., None], 3, axis=2))
    assert (binary_mask(three) == binary_mask(Image.fromarray(hole))).all()
    assert binary_mask(hole).sum() == 1


@pytest.mark.parametrize("profile", ["default", "reference"])
def test_diffusion_inpainting_keeps_native_size_with_the_profile_strength(tiny_models, profile, monkeypatch):
    photo, hole = _photo_and_hole((300, 203))
    inpainter = DiffusionInpainter(tiny_models, "cpu", profile=profile)
    calls = []
    pipeline_call = type(inpainter.pipeline).__call__
    monkeypatch.setattr(type(inpainter.pipeline), "__call__", lambda self, **kw: calls.append(kw) or pipeline_call(self, **kw))
    filled = inpainter(photo, hole)
    assert filled.size == photo.size
    assert calls[0]["strength"] == DIFFUSION_STRENGTH[profile] == (1.0 if profile == "default" else 0.6)
    assert (calls[0]["width"], calls[0]["height"]) == (296, 200)
