"""Step 9, refine: the VAE precision of each profile."""

import numpy as np
import pytest
import torch
from PIL import Image

from oneposetrans.generate import Generator
from oneposetrans.profiles import DEFAULT, REFERENCE
from oneposetrans.refine import Refiner
from oneposetrans.settings import RefineSettings


@pytest.mark.parametrize("profile", [DEFAULT, REFERENCE], ids=lambda profile: profile.name)
def test_refine_vae_is_a_bf16_copy_in_reference_and_the_generators_otherwise(tiny_models, profile, monkeypatch):
    """The published refining stage loaded its VAE in bf16 and used it for the transparent encode
    and the decode, and cast the sampled latents to bf16 before unscaling them."""
    generator = Generator(tiny_models, "cpu", profile=profile)
    refiner = Refiner(generator, tiny_models)
    monkeypatch.setattr(refiner, "frame", lambda image, settings: (64, 64))  # not the published 1024x1024: a CPU test
    seen = []
    for part in (refiner.vae.encoder, refiner.vae.decoder):
        part.register_forward_pre_hook(lambda module, args, name=type(part).__name__: seen.append((name, args[0].dtype)))
    decoded = []
    decode = refiner.pipe.decode_transparent_latents
    refiner.pipe.decode_transparent_latents = lambda latents, **kw: decoded.append(latents.dtype) or decode(latents, **kw)
    reposed = Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 4), np.uint8), "RGBA")
    source = Image.new("RGB", (64, 64), (120, 60, 30))
    settings = RefineSettings(steps=1, resolution=64)
    refined = refiner.refine(reposed, "A woman with face, red coat", source, None, settings)
    dtype = torch.bfloat16 if profile is REFERENCE else torch.float32
    assert seen == [("Encoder", dtype), ("Decoder", dtype)] and decoded == [dtype] and refined.mode == "RGBA"
    assert generator.pipe.vae.dtype == torch.float32  # the generator's own VAE is untouched
    assert (refiner.vae is generator.pipe.vae) == (profile is DEFAULT)
    if profile is REFERENCE:
        weights = dict(generator.pipe.vae.named_parameters())
        assert all(torch.equal(value, weights[name].to(torch.bfloat16)) for name, value in refiner.vae.named_parameters())
