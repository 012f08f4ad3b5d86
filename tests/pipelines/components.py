"""The pipeline's tiny components built in code from their seeds, as diffusers' fast tests build
theirs (``get_dummy_components``): the tiny kit saves these same models, so a test of the files
and a test of the components see the same weights. Only the tokenizers' vocabulary files are read
(from the kit, which builds them from open-clip's real BPE merges)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPTokenizer

from oneposetrans.pose import BUNDLED_POSES, load_pose_map
from oneposetrans.testing import tiny
from oneposetrans.vcm import VisualConsistencyModule

TOLERANCE = 1e-5
CAPTION = "A woman with face, red coat"
NEGATIVE = "low quality, bad quality"


@functools.cache
def _built(kit: Path, vcm: bool) -> dict:
    parts = tiny.sdxl_components()
    components = {
        **parts,
        "controlnet": tiny.controlnet_model(),
        "tokenizer": CLIPTokenizer.from_pretrained(kit / "RealVisXL_V4.0" / "tokenizer"),
        "tokenizer_2": CLIPTokenizer.from_pretrained(kit / "RealVisXL_V4.0" / "tokenizer_2"),
        "feature_extractor": None,
        "image_encoder": None,
    }
    if vcm:
        # The kit's adapters: their weights depend on the UNet's layout only, not on its values.
        encoder = tiny.clip_image_encoder()
        image = tiny.ip_adapter_state(parts["unet"], encoder, 30)
        face = tiny.instantid_state(parts["unet"], tiny.TINY_FACE_HIDDEN, 40)
        module = VisualConsistencyModule.from_adapter_states(parts["unet"], image, face)
        components |= {"vcm": module, "image_encoder": encoder, "feature_extractor": CLIPImageProcessor()}
    return components


def get_dummy_components(kit: Path, vcm: bool = False) -> dict:
    """Fresh components (a test may change them): SDXL + ControlNet, and with ``vcm`` the VCM, its
    CLIP image encoder and processor, built once per process and copied."""
    return copy.deepcopy(_built(kit, vcm))


def parent_components(components: dict) -> dict:
    """What the stock ``StableDiffusionXLControlNetPipeline`` takes of ``components``."""
    return {name: value for name, value in components.items() if name not in ("vcm", "transparent_decoder", "transparent_encoder")}


@functools.cache
def poses() -> tuple[Image.Image, ...]:
    return tuple(load_pose_map(path, 64)[0] for path in BUNDLED_POSES[:2])


def get_dummy_inputs(seed: int = 0, **overrides) -> dict:
    values = dict(
        prompt=CAPTION,
        negative_prompt=NEGATIVE,
        image=poses()[0],
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=2,
        output_type="np",
    )
    return {**values, **overrides}


def face() -> np.ndarray:
    return np.random.RandomState(0).randn(512).astype(np.float32) * 10


def images(output) -> np.ndarray:
    found = output.images if hasattr(output, "images") else output[0]
    if isinstance(found, list):
        return np.stack([np.asarray(image, np.float32) / 255 for image in found])
    return found.float().cpu().numpy() if isinstance(found, torch.Tensor) else found.astype(np.float32)


def assert_same(ours, parent, tolerance: float = TOLERANCE) -> None:
    ours, parent = images(ours), images(parent)
    assert ours.shape == parent.shape
    assert np.abs(ours - parent).max() <= tolerance
