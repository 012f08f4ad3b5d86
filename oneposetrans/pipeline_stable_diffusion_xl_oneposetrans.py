"""``StableDiffusionXLOnePoseTransPipeline``: SDXL + OpenPose ControlNet + the Visual Consistency
Module + LayerDiffuse transparency (OnePoseTrans, arXiv 2409.09593, oneposetrans.md section 2).

One call renders one identity in N target poses: the prompt, image-prompt and face embeddings
are computed once and shared by every pose; the poses are sampled in batches, each from its own
generator. The denoising loop is diffusers' ``StableDiffusionXLControlNetPipeline`` loop: the VCM
lives in the UNet's attention processors (:mod:`oneposetrans.vcm`), and the ControlNet's
processors read only the text tokens.

Example::

    pipe = StableDiffusionXLOnePoseTransPipeline.from_pretrained("models/RealVisXL_V4.0", controlnet=controlnet)
    pipe.load_vcm("models/IP-Adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
                  "models/IP-Adapter/models/image_encoder", "models/InstantID/ip-adapter.bin")
    pipe.load_layerdiffuse("models/LayerDiffuse")
    out = pipe("A woman with face, red coat", image=[pose_a, pose_b], ip_adapter_image=photo,
               face_embedding=arcface_512, generator=[torch.Generator().manual_seed(97)] * 2)
    out.images  # two RGBA images
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionXLControlNetPipeline
from diffusers.utils import BaseOutput

from oneposetrans import layerdiffuse, vcm
from oneposetrans.errors import BadInputError

logger = logging.getLogger(__name__)

DEFAULT_NEGATIVE_PROMPT = "low quality, bad quality"
SUBJECT_ADAPTER = "subject"


@dataclass
class OnePoseTransPipelineOutput(BaseOutput):
    """``images``: one per target pose, RGBA when decoded transparently, else RGB.
    ``notes``: what the call could not use (no face token, no face), in words."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    notes: list[str]


class StableDiffusionXLOnePoseTransPipeline(StableDiffusionXLControlNetPipeline):
    def _init_vcm_state(self) -> None:
        if not hasattr(self, "vcm_layout"):
            self.vcm_layout = vcm.VCMLayout()
            self.vcm_processors: dict[str, vcm.VCMAttnProcessor] = {}
            self.image_projection = None
            self.face_projection = None
            self.transparent_decoder = None
            self.transparent_encoder = None
            self.profile = "default"

    # -- loading ------------------------------------------------------------------------------

    def load_vcm(
        self,
        ip_adapter: str | os.PathLike | None,
        image_encoder: str | os.PathLike | None,
        face_adapter: str | os.PathLike | None,
        profile: str = "default",
    ) -> None:
        """Install the VCM processors and projections from the published checkpoints.

        Either adapter may be None (that branch is then unavailable). ``profile="reference"``
        keeps the published ControlNet text window (tokens 0..56) and the face key quirk.
        """
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        self._init_vcm_state()
        self.profile = profile
        image_state = vcm.load_adapter_checkpoint(ip_adapter) if ip_adapter else None
        face_state = vcm.load_adapter_checkpoint(face_adapter) if face_adapter else None
        dtype, device = self.unet.dtype, self.unet.device
        if image_state is not None:
            if image_encoder is None:
                raise BadInputError("the IP-Adapter needs its CLIP image encoder folder")
            encoder = CLIPVisionModelWithProjection.from_pretrained(image_encoder, dtype=dtype, local_files_only=True)
            # The published code used a default CLIPImageProcessor (224, OpenAI mean/std).
            self.register_modules(image_encoder=encoder.to(device), feature_extractor=CLIPImageProcessor())
            self.image_projection = self.unet._convert_ip_adapter_image_proj_to_diffusers(
                image_state["image_proj"], low_cpu_mem_usage=False
            ).to(device, dtype)
        if face_state is not None:
            self.face_projection = self.unet._convert_ip_adapter_image_proj_to_diffusers(
                face_state["image_proj"], low_cpu_mem_usage=False
            ).to(device, dtype)
        self.vcm_layout.face_key_from_value = profile == "reference"
        self.vcm_processors = vcm.install_vcm(
            self.unet,
            image_state["ip_adapter"] if image_state else None,
            face_state["ip_adapter"] if face_state else None,
            self.vcm_layout,
        )
        for processor in self.vcm_processors.values():
            processor.to(device, dtype)
        text_window = vcm.REFERENCE_CONTROLNET_TEXT_TOKENS if profile == "reference" else vcm.TEXT_TOKENS
        controlnets = getattr(self.controlnet, "nets", [self.controlnet])
        for controlnet in controlnets:
            controlnet.set_attn_processor(
                {
                    name: vcm.TextOnlyAttnProcessor(text_window) if name.endswith("attn2.processor") else processor
                    for name, processor in controlnet.attn_processors.items()
                }
            )
        self.set_ip_adapter_scale(vcm.published_ip_scales())

    def set_ip_adapter_scale(self, block_scales: dict[str, float] | float, face_scale: float = 0.0) -> None:
        """Image-branch scale per block prefix (e.g. ``{"up_blocks.0.attentions.1": 1.0}``), or one
        scale for every layer; the face attention branch (0 in the method) likewise."""
        if isinstance(block_scales, (int, float)):
            block_scales = {"down_blocks": block_scales, "mid_block": block_scales, "up_blocks": block_scales}
        vcm.set_ip_scales(self.vcm_processors, block_scales, face_scale)

    def load_layerdiffuse(self, folder: str | os.PathLike, encoder: bool = False) -> None:
        """Merge the attention offsets into the UNet (before any LoRA) and load the transparent
        decoder (and the encoder, which only refining needs)."""
        self._init_vcm_state()
        folder = Path(folder)
        layerdiffuse.merge_attention_offsets(self.unet, folder / "ld_diffusers_sdxl_attn.safetensors")
        self.transparent_decoder = layerdiffuse.TransparentDecoderUNet.from_single_file(
            folder / "ld_diffusers_sdxl_vae_transparent_decoder.safetensors", self.unet.dtype
        ).to(self.unet.device)
        if encoder:
            self.load_transparent_encoder(folder)

    def load_transparent_encoder(self, folder: str | os.PathLike) -> None:
        """LayerDiffuse's transparent encoder (RGBA -> latent), which only refining needs."""
        self.transparent_encoder = layerdiffuse.TransparentOffsetEncoder.from_single_file(
            Path(folder) / "ld_diffusers_sdxl_vae_transparent_encoder.safetensors", self.unet.dtype
        ).to(self.unet.device)

    def load_subject_lora(self, path: str | os.PathLike, block_scales: dict | float, fuse: bool = False) -> None:
        """The identity's LoRA (diffusers format) with block-wise scales ("weight injection").

        ``fuse`` merges it, scales included, into the UNet's weights for the denoising loop, so
        that no step pays the 560 adapters' extra matrix products; :meth:`unload_subject_lora`
        then restores the exact original weights (an unmerge alone would leave rounding behind,
        and it would build up over the identities of a run)."""
        path = Path(path)
        self.load_lora_weights(path.parent, weight_name=path.name, adapter_name=SUBJECT_ADAPTER)
        # Pipeline-level dicts are keyed by component; a bare block dict would be dropped.
        self.set_adapters([SUBJECT_ADAPTER], adapter_weights=[{"unet": block_scales}])
        if fuse:
            self._fuse_subject_lora()

    def unload_subject_lora(self) -> None:
        for name, module in self._fused_subject_layers():
            module.unmerge()
            module.get_base_layer().weight.data.copy_(self._unfused_weights[name])
        if SUBJECT_ADAPTER in self.get_list_adapters().get("unet", []):
            self.delete_adapters(SUBJECT_ADAPTER)

    def _subject_layers(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, module in self.unet.named_modules():
            if isinstance(module, BaseTunerLayer) and SUBJECT_ADAPTER in getattr(module, "lora_A", {}):
                yield name, module

    def _fused_subject_layers(self):
        return [(name, module) for name, module in self._subject_layers() if SUBJECT_ADAPTER in module.merged_adapters]

    @torch.no_grad()
    def _fuse_subject_lora(self) -> None:
        if not hasattr(self, "_unfused_weights"):
            self._unfused_weights: dict[str, torch.Tensor] = {}
        pin = torch.cuda.is_available() and self.unet.device.type == "cuda"
        for name, module in self._subject_layers():
            if name not in self._unfused_weights:
                # Taken once per process: the base weights only ever change by these merges.
                weight = module.get_base_layer().weight
                self._unfused_weights[name] = torch.empty(weight.shape, dtype=weight.dtype, pin_memory=pin).copy_(weight)
            module.merge(adapter_names=[SUBJECT_ADAPTER])

    # -- identity conditioning ----------------------------------------------------------------

    @torch.no_grad()
    def encode_identity(
        self,
        prompt: str,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        ip_adapter_image: PIL.Image.Image | None = None,
        face_embedding: np.ndarray | torch.Tensor | None = None,
        do_classifier_free_guidance: bool = True,
    ) -> vcm.IdentityConditioning:
        """Text, image-prompt and face tokens of one identity: ``[text 77 | image 4 | face 16]``.
        The unconditional branch gets the negative prompt, zero image embeds and zero face embeds."""
        self._init_vcm_state()
        device, notes = self._execution_device, []
        prompt_embeds, negative_embeds, pooled, negative_pooled = self.encode_prompt(
            prompt, device=device, do_classifier_free_guidance=do_classifier_free_guidance, negative_prompt=negative_prompt
        )
        identity_parts, negative_parts = [prompt_embeds], [negative_embeds]
        image_tokens = face_tokens = 0
        wants_image = any(p.ip_scale != 0 for p in self.vcm_processors.values())
        if ip_adapter_image is not None and self.image_projection is not None and wants_image:
            # convert("RGB") drops alpha without compositing, as transformers' processor did.
            pixels = self.feature_extractor(ip_adapter_image.convert("RGB"), return_tensors="pt").pixel_values
            embeds = self.image_encoder(pixels.to(device, self.image_encoder.dtype)).image_embeds
            identity_parts.append(self.image_projection(embeds))
            negative_parts.append(self.image_projection(torch.zeros_like(embeds)))
            image_tokens = identity_parts[-1].shape[1]
        face_position = negative_face_position = None
        if face_embedding is not None and self.face_projection is not None:
            face_position, negative_face_position = self._face_positions(prompt, negative_prompt, notes)
            if face_position is not None:
                face = torch.as_tensor(np.asarray(face_embedding), dtype=self.unet.dtype, device=device).reshape(1, 1, -1)
                identity_parts.append(self.face_projection(face))
                negative_parts.append(self.face_projection(torch.zeros_like(face)))
                face_tokens = identity_parts[-1].shape[1]
        elif face_embedding is None and self.face_projection is not None:
            notes.append("no face embedding: generated without face tokens")
        return vcm.IdentityConditioning(
            prompt_embeds=torch.cat(identity_parts, dim=1),
            negative_prompt_embeds=torch.cat(negative_parts, dim=1) if negative_embeds is not None else None,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=negative_pooled,
            image_tokens=image_tokens,
            face_tokens=face_tokens,
            face_position=face_position,
            negative_face_position=negative_face_position,
            notes=notes,
        )

    def _face_positions(self, prompt: str, negative_prompt: str, notes: list[str]) -> tuple[int | None, int | None]:
        if self.profile == "reference":
            # Published: position 4 in both halves, whatever the words are.
            return vcm.REFERENCE_FACE_POSITION, vcm.REFERENCE_FACE_POSITION
        position = vcm.face_token_position(self.tokenizer, prompt)
        if position is None:
            message = f'caption has no word "face" ({prompt[:60]!r}): generated without the face embedding'
            logger.warning(message)
            notes.append(message)
            return None, None
        return position, vcm.face_token_position(self.tokenizer, negative_prompt)

    # -- generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | None = None,
        image: list[PIL.Image.Image] | PIL.Image.Image | None = None,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        ip_adapter_image: PIL.Image.Image | None = None,
        face_embedding: np.ndarray | torch.Tensor | None = None,
        identity: vcm.IdentityConditioning | None = None,
        face_keypoints_image: PIL.Image.Image | None = None,
        identitynet_conditioning_scale: float = 0.8,
        num_inference_steps: int = 25,
        guidance_scale: float = 5.0,
        controlnet_conditioning_scale: float = 1.0,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        transparent: bool | None = None,
        batch_size: int = 4,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        **kwargs,
    ) -> OnePoseTransPipelineOutput | tuple:
        """Render the identity in every pose of ``image`` (pose maps of one size per batch).

        ``identity`` (from :meth:`encode_identity`) replaces prompt/ip_adapter_image/face_embedding
        when the caller renders the same identity over several calls. ``transparent`` defaults to
        True when LayerDiffuse is loaded. With a second ControlNet (InstantID's IdentityNet, loaded
        as a ``MultiControlNetModel``), ``face_keypoints_image`` is its condition for every pose.
        Remaining keyword arguments go to the diffusers loop.
        """
        self._init_vcm_state()
        poses = [image] if isinstance(image, PIL.Image.Image) else list(image)
        if not poses:
            raise BadInputError("no target pose given")
        generators = generator if isinstance(generator, list) else [generator] * len(poses)
        if len(generators) != len(poses):
            raise BadInputError(f"{len(generators)} generators for {len(poses)} poses")
        do_cfg = guidance_scale > 1.0
        if identity is None:
            if prompt is None:
                raise BadInputError("give a prompt or an identity")
            identity = self.encode_identity(prompt, negative_prompt, ip_adapter_image, face_embedding, do_cfg)
        transparent = self.transparent_decoder is not None if transparent is None else transparent
        if transparent and self.transparent_decoder is None:
            raise BadInputError("transparent decoding needs load_layerdiffuse() first")

        identitynet = len(getattr(self.controlnet, "nets", [])) > 1
        if identitynet and face_keypoints_image is None:
            raise BadInputError("the IdentityNet ControlNet needs face_keypoints_image (no face found?)")
        if identitynet:
            # diffusers' loop takes one image per ControlNet with several ControlNets: one pose a batch.
            batch_size = 1
        results = []
        for start in range(0, len(poses), batch_size):
            chunk = poses[start : start + batch_size]
            control_image, control_scale = chunk, controlnet_conditioning_scale
            if identitynet:
                keypoints = face_keypoints_image.resize(chunk[0].size)
                control_image = [chunk[0], keypoints]
                control_scale = [controlnet_conditioning_scale, identitynet_conditioning_scale]
            self._set_layout(identity, len(chunk), do_cfg)
            try:
                output = super().__call__(
                    image=control_image,
                    height=chunk[0].height,
                    width=chunk[0].width,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    prompt_embeds=identity.prompt_embeds.repeat(len(chunk), 1, 1),
                    negative_prompt_embeds=_repeat(identity.negative_prompt_embeds, len(chunk)),
                    pooled_prompt_embeds=identity.pooled_prompt_embeds.repeat(len(chunk), 1),
                    negative_pooled_prompt_embeds=_repeat(identity.negative_pooled_prompt_embeds, len(chunk)),
                    controlnet_conditioning_scale=control_scale,
                    control_guidance_start=control_guidance_start,
                    control_guidance_end=control_guidance_end,
                    generator=generators[start : start + batch_size],
                    output_type="latent" if transparent else output_type,
                    callback_on_step_end=callback_on_step_end,
                    callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                    **kwargs,
                )
            finally:
                self._set_layout(None, 0, do_cfg)
            results.append(self._decode_transparent(output.images, output_type) if transparent else output.images)

        images = _concatenate(results)
        if not return_dict:
            return (images, identity.notes)
        return OnePoseTransPipelineOutput(images=images, notes=list(identity.notes))

    @contextlib.contextmanager
    def identity_layout(self, identity: vcm.IdentityConditioning, rows: int, do_cfg: bool):
        """Tell the VCM processors how ``identity``'s tokens are laid out while another diffusers
        loop (the refining img2img) runs the UNet with its embeddings."""
        self._init_vcm_state()
        self._set_layout(identity, rows, do_cfg)
        try:
            yield
        finally:
            self._set_layout(None, 0, do_cfg)

    def decode_transparent_latents(self, latents: torch.Tensor, main_stage: bool = True) -> list[PIL.Image.Image]:
        """RGBA images from sampled (scaled) latents; see :meth:`_decode_transparent`."""
        return self._decode_transparent(latents, "pil", main_stage)

    def _set_layout(self, identity: vcm.IdentityConditioning | None, rows: int, do_cfg: bool) -> None:
        layout = self.vcm_layout
        layout.changed()
        if identity is None:
            layout.image_tokens = layout.face_tokens = 0
            layout.face_positions = None
            return
        layout.image_tokens, layout.face_tokens = identity.image_tokens, identity.face_tokens
        position = -1 if identity.face_position is None else identity.face_position
        negative = -1 if identity.negative_face_position is None else identity.negative_face_position
        # diffusers stacks the batch as [unconditional rows | conditional rows] under CFG.
        positions = ([negative] * rows if do_cfg else []) + [position] * rows
        layout.face_positions = torch.tensor(positions, device=self._execution_device) if identity.face_tokens else None

    def _decode_transparent(self, latents: torch.Tensor, output_type: str, main_stage: bool = True):
        """RGB through the SDXL VAE, then alpha and foreground through the transparent decoder.

        Default profile: the decoder reads the unscaled latent, as LayerDiffuse does, and the
        8-bit output is rounded. Reference: the published main stage passed the latent still
        multiplied by the scaling factor and gave the decoder the pipeline's 8-bit RGB (rounded);
        its refining stage (``main_stage=False``) did neither. Both truncated the output to 8 bits
        (numpy's ``astype(uint8)``).
        """
        needs_upcasting = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if needs_upcasting:
            self.upcast_vae()
        vae_dtype = next(iter(self.vae.post_quant_conv.parameters())).dtype
        unscaled = latents / self.vae.config.scaling_factor
        pixel = self.vae.decode(unscaled.to(vae_dtype), return_dict=False)[0]
        if needs_upcasting:
            self.vae.to(dtype=torch.float16)
        pixel = (pixel * 0.5 + 0.5).clip(0, 1)
        reference = self.profile == "reference"
        if reference and main_stage:
            pixel = (pixel.float() * 255.0).round() / 255.0
        decoder_latent = latents if reference and main_stage else unscaled
        # The published decoder ran its eight views one at a time.
        rgba = layerdiffuse.decode_transparent(self.transparent_decoder, pixel, decoder_latent, batched=not reference).float()
        if output_type == "pt":
            return rgba
        array = rgba.movedim(1, -1).cpu().numpy() * 255.0
        array = (array if reference else array.round()).clip(0, 255).astype(np.uint8)
        if output_type == "np":
            return array
        return [PIL.Image.fromarray(item, "RGBA") for item in array]


def _repeat(tensor: torch.Tensor | None, times: int) -> torch.Tensor | None:
    if tensor is None:
        return None
    return tensor.repeat(times, *([1] * (tensor.ndim - 1)))


def _concatenate(results: list):
    if isinstance(results[0], list):
        return [item for chunk in results for item in chunk]
    if isinstance(results[0], np.ndarray):
        return np.concatenate(results)
    return torch.cat(results)
