"""The refining stage (recipe step 9): LayerDiffuse img2img of each reposed result.

As in the published refining_stage_*.py, the reposed RGBA is encoded by the transparent encoder, renoised and
denoised at strength 0.65 with DPM++ 2M over Karras sigmas (Karras et al., 2022; Lu et al.,
2022), CFG 7, seed 12345, with the source photo as IP-Adapter image prompt and the source's
LoRA only at ``up_blocks.0.attentions.1``, then decoded to RGBA again. No ControlNet and no
face: the pose survives through the img2img strength alone.

The published sampler built ``int(25 / 0.65) = 38`` Karras sigmas and ran the last 26 of them,
i.e. 25 steps; diffusers' img2img with 38 steps and strength 25/38 starts at the same sigma.
Its IP-Adapter scale was meant for one block but, through an attribute-name mismatch, applied
1.0 in all 70 cross-attention layers (README *Profiles*): the reference profile does that, the default
does what was meant.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionXLImg2ImgPipeline
from PIL import Image

from oneposetrans import registry
from oneposetrans.errors import BadInputError
from oneposetrans.generate import Generator, generator_models
from oneposetrans.image_io import load_image, save_image
from oneposetrans.layerdiffuse import encode_transparent
from oneposetrans.pose import generation_size
from oneposetrans.profiles import Profile
from oneposetrans.results import ResultsTree, is_done, split_pair_name
from oneposetrans.settings import STYLE_BLOCK, RefineSettings, style_block_lora_scales
from oneposetrans.stages import Stage


class Refiner:
    """Shares the generator's UNet, VAE, text and image encoders; adds the transparent encoder and
    a DPM++ 2M Karras img2img pipeline around them."""

    def __init__(self, generator: Generator, models_dir):
        self.generator = generator
        self.pipe = generator.pipe
        self.profile = generator.profile
        if self.pipe.transparent_encoder is None:
            self.pipe.load_transparent_encoder(registry.require("layerdiffuse", models_dir))
        scheduler = DPMSolverMultistepScheduler.from_config(
            self.pipe.scheduler.config,
            algorithm_type="dpmsolver++",
            solver_order=2,
            use_karras_sigmas=True,
            timestep_spacing="leading",
            final_sigmas_type="zero",
        )
        self.img2img = StableDiffusionXLImg2ImgPipeline(
            vae=self.pipe.vae,
            text_encoder=self.pipe.text_encoder,
            text_encoder_2=self.pipe.text_encoder_2,
            tokenizer=self.pipe.tokenizer,
            tokenizer_2=self.pipe.tokenizer_2,
            unet=self.pipe.unet,
            scheduler=scheduler,
            requires_aesthetics_score=False,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
        self.img2img.set_progress_bar_config(disable=True)
        # The published stage loaded its own VAE in bf16 (from the fp16 files: a bf16 cast of them).
        self.vae = copy.deepcopy(self.pipe.vae).to(torch.bfloat16) if self.profile.refine_vae_dtype == "bf16" else self.pipe.vae

    def _unprojected_pooled(self, text: str) -> torch.Tensor:
        """The published refine stage encoded prompts like its LoRA training: text_encoder_2's
        pooled output without the projection."""
        tokenizer = self.pipe.tokenizer_2
        ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        return self.pipe.text_encoder_2.text_model(ids.to(self.pipe.device)).pooler_output

    def frame(self, image: Image.Image, settings: RefineSettings) -> tuple[int, int]:
        if self.profile.refine_input == "published":
            return (1024, 1024)
        return generation_size(image.width, image.height, settings.resolution)

    @torch.no_grad()
    def refine(
        self, reposed: Image.Image, caption: str, source: Image.Image, lora: str | Path | None, settings: RefineSettings
    ) -> Image.Image:
        size = self.frame(reposed, settings)
        published = self.profile.refine_input == "published"
        reference = source.convert("RGB").resize((1024, 1024)) if published else source.convert("RGB")
        self.pipe.set_ip_adapter_scale(1.0 if self.profile.refine_ip_scale == "everywhere" else {STYLE_BLOCK: 1.0})
        if lora is not None:
            # As published: the LoRA acts only at up_blocks.0.attentions.1 while refining.
            self.pipe.load_subject_lora(Path(lora), style_block_lora_scales(0.0), fuse=self.profile.fuse_lora)
        try:
            identity = self.pipe.encode_identity(caption, settings.negative_prompt, reference, None, do_classifier_free_guidance=True)
            if published:
                identity.pooled_prompt_embeds = self._unprojected_pooled(caption).to(identity.pooled_prompt_embeds)
                identity.negative_pooled_prompt_embeds = self._unprojected_pooled(settings.negative_prompt).to(identity.pooled_prompt_embeds)
            rgba = np.asarray(reposed.convert("RGBA").resize(size, Image.BICUBIC))
            latents = encode_transparent(self.vae, self.pipe.transparent_encoder, [rgba])
            latents = latents * self.vae.config.scaling_factor
            # The image prompt in diffusers' form (the unconditional row first), as its img2img takes it.
            image_prompt = [identity.image_embeds_for(("image",), 1, True)[0]] if identity.has_image else None
            output = self.img2img(
                image=latents.to(self.pipe.unet.dtype),
                prompt_embeds=identity.prompt_embeds,
                negative_prompt_embeds=identity.negative_prompt_embeds,
                pooled_prompt_embeds=identity.pooled_prompt_embeds,
                negative_pooled_prompt_embeds=identity.negative_pooled_prompt_embeds,
                ip_adapter_image_embeds=image_prompt,
                num_inference_steps=settings.schedule_length,
                strength=settings.steps / settings.schedule_length,
                guidance_scale=settings.guidance,
                generator=torch.Generator(self.pipe.device).manual_seed(settings.seed),
                output_type="latent",
            )
            # The published refine stage cast to its VAE's dtype, divided by the scaling factor and
            # gave the decoder the VAE's own RGB.
            sampled = output.images.to(self.vae.dtype) if self.profile.refine_vae_dtype == "bf16" else output.images
            return self.pipe.decode_transparent_latents(sampled, main_stage=False, vae=self.vae)[0]
        finally:
            if lora is not None:
                self.pipe.unload_subject_lora()


def refine_inputs(tree: ResultsTree, profile: Profile, names: list[str] | None = None) -> list[Path]:
    """The results to refine: ``reposed_result`` (or those of ``names``) in the default profile,
    which refines the LayerDiffuse RGBA itself; ``reposed_rgba`` (step 6: the generated colours
    with the SAM mask as alpha) in the reference profile, as published."""
    folder = "reposed_rgba" if profile.refine_input == "published" else "reposed_result"
    return sorted(p for p in tree.folder(folder).glob("*.png") if names is None or p.name in names)


class RefineStage(Stage[Path]):
    """Refine each reposed result into ``refined_result`` (step 9)."""

    name = "refine"

    def __init__(self, tree: ResultsTree, captions: dict[str, str], settings: RefineSettings, overwrite: bool = False):
        self.tree = tree
        self.captions = captions
        self.settings = settings
        self.overwrite = overwrite

    def models(self, session) -> list[str]:
        return generator_models(session)  # refining runs on the generator's components

    def outputs(self, case: Path) -> list[Path]:
        return [self.tree.file("refined_result", case.name)]

    def run(self, case: Path, session, log) -> None:
        source, _ = split_pair_name(case.name)
        caption = self.captions.get(source)
        if not caption:
            raise BadInputError(f"{case}: no caption for {source}")
        source_image = load_image(self.tree.file("images", f"{source}.png"), "RGB")
        lora = self.tree.file("lora", f"{source}.safetensors")
        if not is_done(lora):
            raise BadInputError(f"{case}: no LoRA {lora} (run finetune first)")
        try:
            refined = session.refiner.refine(load_image(case, "RGBA"), caption, source_image, lora, self.settings)
        except ValueError as error:  # the pipeline's check of its inputs
            raise BadInputError(f"{case}: {error}") from None
        save_image(refined, self.outputs(case)[0])
        log.ok(case.stem, size=list(refined.size))
