"""The reposing stage: render the person of a source photo in target poses.

What is built so far is the SDXL + OpenPose ControlNet core with the published sampling
settings (Euler, 25 steps, CFG 5.0, seed 97, ControlNet scale 1.0 over all steps, negative
prompt "low quality, bad quality") and the per-image LoRA with its block-wise scales
("weight injection"), run through stock diffusers. The Visual Consistency Module
(IP-Adapter image tokens, InstantID face) and LayerDiffuse transparency are not built yet
(issue 3); :data:`NOT_YET_BUILT` says so to the user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from oneposetrans import registry
from oneposetrans.runtime import quiet_libraries, resolve_device, resolve_dtype

NOT_YET_BUILT = "IP-Adapter image prompt, InstantID face and LayerDiffuse alpha (issue 3)"


def published_lora_scales() -> dict:
    """LoRA strength per attention block: full only where the style lives (up_blocks.0.attentions.1)."""
    return {
        "down": {"block_1": [0.2, 0.2], "block_2": [0.2, 0.2]},
        "mid": 0.2,
        "up": {"block_0": [0.2, 1.0, 0.2], "block_1": [0.2, 0.2, 0.2]},
    }


@dataclass
class GenerationSettings:
    """Published defaults of the main stage (oneposetrans.md section 2.5)."""

    steps: int = 25
    guidance: float = 5.0
    seed: int = 97
    controlnet_scale: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    negative_prompt: str = "low quality, bad quality"
    resolution: int = 1024
    lora_scales: dict = field(default_factory=published_lora_scales)


class Reposer:
    """Holds the generation models; load once, then call :meth:`generate` for every case."""

    def __init__(self, models_dir: str | os.PathLike, device: str = "auto", dtype: str = "auto"):
        from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

        quiet_libraries()
        base = registry.require("sdxl-base", models_dir)
        controlnet_dir = registry.require("controlnet-openpose", models_dir)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        controlnet = ControlNetModel.from_pretrained(controlnet_dir, dtype=self.dtype, local_files_only=True)
        self.pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
            base,
            controlnet=controlnet,
            dtype=self.dtype,
            variant=registry.weights_variant(base),
            local_files_only=True,
            add_watermarker=False,
        ).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def generate(
        self,
        caption: str,
        pose_maps: list[Image.Image],
        settings: GenerationSettings,
        lora: str | os.PathLike | None = None,
    ) -> list[Image.Image]:
        """One image per pose map. The prompt is encoded and the identity's LoRA loaded once
        for all its targets; every target is sampled from the same seed, as each published
        case was."""
        if lora is not None:
            lora = Path(lora)
            self.pipe.load_lora_weights(lora.parent, weight_name=lora.name, adapter_name="subject")
            # Pipeline-level dicts are keyed by component; a bare block dict would be dropped.
            self.pipe.set_adapters(["subject"], adapter_weights=[{"unet": settings.lora_scales}])
        try:
            return self._sample(caption, pose_maps, settings)
        finally:
            if lora is not None:
                self.pipe.delete_adapters("subject")

    def _sample(self, caption: str, pose_maps: list[Image.Image], settings: GenerationSettings) -> list[Image.Image]:
        prompt_embeds, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
            caption,
            device=self.device,
            do_classifier_free_guidance=settings.guidance > 1.0,
            negative_prompt=settings.negative_prompt,
        )
        images = []
        for pose_map in pose_maps:
            generator = torch.Generator(self.device).manual_seed(settings.seed)
            result = self.pipe(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                pooled_prompt_embeds=pooled,
                negative_pooled_prompt_embeds=negative_pooled,
                image=pose_map,
                width=pose_map.width,
                height=pose_map.height,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                controlnet_conditioning_scale=settings.controlnet_scale,
                control_guidance_start=settings.control_start,
                control_guidance_end=settings.control_end,
                generator=generator,
            )
            images.append(result.images[0])
        return images
