"""Background inpainting: the person is removed from the source photo so that reposed people can
be composited onto their own background.

Two inpainters, as in the published tool (the published tool_utils.py): LaMa (Suvorov et al., 2022) as
a fixed-size ONNX export through onnxruntime, and SDXL inpainting through diffusers. Both are
loaded once per run. Differences from the published code, by profile:

* LaMa: both profiles resize the photo and its mask to the model's input with bicubic
  resampling and take every non-zero pixel of the resized mask as hole, as published. The
  published output stays at the model's 1024x1024 (``reference``, which needs that 1024x1024
  export), which only lines up with square DeepFashion results. The default profile resizes it
  back to the source size and keeps the source's own pixels outside the (dilated) mask, where
  LaMa had nothing to do.
* SDXL inpainting: strength 0.6 in the reference profile leaves a ghost of the person in the hole;
  the default uses 1.0. The reference profile also keeps the published call's output size
  (diffusers' default, 1024x1024 for SDXL) and a seed-0 generator on the GPU when there is one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from oneposetrans import registry
from oneposetrans.errors import BadInputError
from oneposetrans.image_io import load_image, save_image
from oneposetrans.profiles import DEFAULT, Profile
from oneposetrans.results import StageLog, stem
from oneposetrans.runtime import quiet_libraries, resolve_device, resolve_dtype
from oneposetrans.stages import Stage

INPAINTERS = ("lama", "diffusion")

# The published SDXL-inpainting call (seed, steps, guidance, empty prompts) and its strengths.
DIFFUSION_STEPS = 20
DIFFUSION_GUIDANCE = 8.0
DIFFUSION_SEED = 0
DIFFUSION_STRENGTH = {"fitted": 1.0, "published": 0.6}

PUBLISHED_LAMA = "lama_fp32_1024.onnx"
PUBLISHED_LAMA_SIDE = 1024


def binary_mask(mask: Image.Image | np.ndarray) -> np.ndarray:
    """Any mask image (L, RGB, 0/255 or soft) as H x W booleans, hole = True (any non-zero pixel)."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return mask > 0


class LamaInpainter:
    """LaMa through onnxruntime at the export's fixed input size (read from the model)."""

    def __init__(self, models_dir: str | os.PathLike, device: str = "auto", profile: Profile = DEFAULT):
        import onnxruntime

        folder = registry.require("lama", models_dir)
        published = folder / PUBLISHED_LAMA
        self.path = published if profile.lama_export == "published" and published.exists() else sorted(folder.glob("lama_fp32*.onnx"))[0]
        available = onnxruntime.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if resolve_device(device).type == "cuda" and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=providers)
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        if set(inputs) != {"image", "mask"}:
            raise BadInputError(f"{self.path}: expected LaMa inputs 'image' and 'mask', found {sorted(inputs)}")
        height, width = inputs["image"][2:]
        # Dynamic exports name their axes; they run at the photo's size rounded up to 8.
        self.size = (width, height) if isinstance(height, int) and isinstance(width, int) else None
        self.profile = profile
        if profile.lama_export == "published" and self.size != (PUBLISHED_LAMA_SIDE, PUBLISHED_LAMA_SIDE):
            found = "a dynamic-size" if self.size is None else f"a {self.size[0]}x{self.size[1]}"
            raise BadInputError(
                f"{self.path}: {found} LaMa export; --profile reference needs the published "
                f"{PUBLISHED_LAMA_SIDE}x{PUBLISHED_LAMA_SIDE} export as {folder / PUBLISHED_LAMA} (see the README, "
                "'Reproducing the paper')"
            )

    def __call__(self, image: Image.Image, mask: Image.Image | np.ndarray) -> Image.Image:
        image = image.convert("RGB")
        hole = binary_mask(mask)
        if hole.shape != (image.height, image.width):
            hole = np.asarray(Image.fromarray(hole).resize(image.size, Image.NEAREST))
        size = self.size or (-(-image.width // 8) * 8, -(-image.height // 8) * 8)
        # As published: bicubic for both, and any pixel the resized mask touches is hole.
        pixels = np.asarray(image.resize(size, Image.BICUBIC), np.float32) / 255.0
        hole_image = Image.fromarray(np.where(hole, 255, 0).astype(np.uint8), "L")
        model_hole = (np.asarray(hole_image.resize(size, Image.BICUBIC)) > 0).astype(np.float32)
        output = self.session.run(
            None, {"image": pixels.transpose(2, 0, 1)[None], "mask": model_hole[None, None]}
        )[0][0]
        filled = Image.fromarray(np.clip(output.transpose(1, 2, 0), 0, 255).astype(np.uint8), "RGB")
        if self.profile.lama_export == "published":
            return filled
        filled = np.asarray(filled.resize(image.size, Image.BICUBIC))
        return Image.fromarray(np.where(hole[..., None], filled, np.asarray(image)), "RGB")


class DiffusionInpainter:
    """SDXL inpainting 0.1 through diffusers' AutoPipelineForInpainting, loaded once."""

    def __init__(
        self, models_dir: str | os.PathLike, device: str = "auto", dtype: str = "auto", profile: Profile = DEFAULT
    ):
        import torch
        from diffusers import AutoPipelineForInpainting

        quiet_libraries()

        folder = registry.require("sdxl-inpainting", models_dir)
        self.device = resolve_device(device)
        self.pipeline = AutoPipelineForInpainting.from_pretrained(folder, dtype=resolve_dtype(dtype, self.device))
        self.pipeline.to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.strength = DIFFUSION_STRENGTH[profile.diffusion_inpaint]
        self.profile = profile
        self._torch = torch

    def __call__(self, image: Image.Image, mask: Image.Image | np.ndarray) -> Image.Image:
        image = image.convert("RGB")
        hole = Image.fromarray(np.where(binary_mask(mask), 255, 0).astype(np.uint8), "L").resize(image.size, Image.NEAREST)
        if self.profile.diffusion_inpaint == "published":
            # Published: no size given, so diffusers' default (1024x1024 for SDXL) and that output kept;
            # the seed-0 generator lives on the GPU the pipeline runs on.
            size: dict[str, int] = {}
            generator_device = self.device if self.device.type == "cuda" else "cpu"
        else:
            # SDXL needs sides divisible by 8; it runs at the nearest such size and the result is mapped back.
            size = {"width": max(8, image.width // 8 * 8), "height": max(8, image.height // 8 * 8)}
            generator_device = "cpu"
        result = self.pipeline(
            prompt="",
            negative_prompt="",
            image=image,
            mask_image=hole,
            **size,
            strength=self.strength,
            guidance_scale=DIFFUSION_GUIDANCE,
            num_inference_steps=DIFFUSION_STEPS,
            generator=self._torch.Generator(generator_device).manual_seed(DIFFUSION_SEED),
        ).images[0]
        if self.profile.diffusion_inpaint == "published" or result.size == image.size:
            return result
        return result.resize(image.size, Image.BICUBIC)


def make_inpainter(
    kind: str, models_dir: str | os.PathLike, device: str = "auto", dtype: str = "auto", profile: Profile = DEFAULT
) -> Callable[[Image.Image, Image.Image | np.ndarray], Image.Image]:
    if kind == "lama":
        return LamaInpainter(models_dir, device, profile)
    if kind == "diffusion":
        return DiffusionInpainter(models_dir, device, dtype, profile)
    raise BadInputError(f"unknown inpainter {kind!r}; choose from {', '.join(INPAINTERS)}")


class InpaintStage(Stage[Path]):
    """Remove the person from each source under its mask of the same stem (step 4); the
    background keeps the stem, as PNG."""

    name = "inpaint"

    def __init__(self, mask_folder: Path, output_folder: Path, overwrite: bool = False):
        self.mask_folder = mask_folder
        self.output_folder = output_folder
        self.overwrite = overwrite

    def models(self, session) -> list[str]:
        return ["lama"] if session.inpainter_kind == "lama" else ["sdxl-inpainting"]

    def outputs(self, case: Path) -> list[Path]:
        return [self.output_folder / f"{stem(case)}.png"]

    def run(self, case: Path, session, log: StageLog) -> None:
        name = stem(case)
        image = load_image(case, "RGB")
        mask_file = self.mask_folder / f"{name}.png"
        if not mask_file.exists():
            raise BadInputError(f"{case}: no mask {mask_file} (run segment --mode dataset first)")
        mask = load_image(mask_file, "L")
        if not binary_mask(mask).any():
            raise BadInputError(f"{mask_file}: the mask is empty, there is nothing to inpaint")
        result = session.inpainter(image, mask)
        save_image(result, self.output_folder / f"{name}.png")
        log.ok(name, size=list(result.size), inpainter=session.inpainter_kind)
