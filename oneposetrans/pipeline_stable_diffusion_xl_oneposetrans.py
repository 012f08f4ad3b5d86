"""``StableDiffusionXLOnePoseTransPipeline``: SDXL + OpenPose ControlNet + the Visual Consistency
Module + LayerDiffuse transparency (OnePoseTrans, arXiv 2409.09593, section 3).

A diffusers ``StableDiffusionXLControlNetPipeline`` in every respect (its ``__call__`` arguments,
loading and saving, offloading, slicing, schedulers), with the method on top:

* one call renders one identity in N target poses: the prompt, image-prompt and face embeddings
  are computed once and shared by every pose (``image`` may list several poses for one prompt);
* the VCM lives in the UNet's attention processors (:mod:`oneposetrans.vcm`), and the
  ControlNet's processors read only the text tokens;
* LayerDiffuse decodes RGBA images.

With none of the method's inputs given (no ``load_vcm`` image or face, no ``identity``, no
LayerDiffuse), a call is the parent's call with the same arguments.

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
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionXLControlNetPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from oneposetrans import layerdiffuse, vcm
from oneposetrans.errors import BadInputError
from oneposetrans.settings import NEGATIVE_PROMPT, published_ip_scales

logger = logging.getLogger(__name__)

DEFAULT_NEGATIVE_PROMPT = NEGATIVE_PROMPT
SUBJECT_ADAPTER = "subject"
LAYERDIFFUSE_DECODER = "ld_diffusers_sdxl_vae_transparent_decoder.safetensors"
LAYERDIFFUSE_ENCODER = "ld_diffusers_sdxl_vae_transparent_encoder.safetensors"
EXTRAS_FOLDER = "oneposetrans"
"""Where :meth:`~StableDiffusionXLOnePoseTransPipeline.save_pretrained` keeps the method's weights
(beside the diffusers component folders, which ``from_pretrained`` reads as usual)."""


@dataclass
class OnePoseTransPipelineOutput(BaseOutput):
    """``images``: per target pose, ``num_images_per_prompt`` images (RGBA when decoded
    transparently, else RGB) in the requested ``output_type``.
    ``notes``: what the call could not use (no face token, no face), in words."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    notes: list[str]


class StableDiffusionXLOnePoseTransPipeline(StableDiffusionXLControlNetPipeline):
    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel | list[ControlNetModel] | tuple[ControlNetModel] | MultiControlNetModel,
        scheduler: KarrasDiffusionSchedulers,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
        feature_extractor: CLIPImageProcessor = None,
        image_encoder: CLIPVisionModelWithProjection = None,
    ):
        super().__init__(
            vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, controlnet, scheduler,
            force_zeros_for_empty_prompt, add_watermarker, feature_extractor, image_encoder,
        )
        # The method's state exists from construction, so that a pipeline made any way (constructor,
        # from_pretrained, from_pipe) behaves as the parent until load_vcm/load_layerdiffuse.
        self.vcm_layout = vcm.VCMLayout()
        self.vcm_processors: dict[str, vcm.VCMAttnProcessor] = {}
        self.image_projection: torch.nn.Module | None = None
        self.face_projection: torch.nn.Module | None = None
        self.transparent_decoder: layerdiffuse.TransparentDecoderUNet | None = None
        self.transparent_encoder: layerdiffuse.TransparentOffsetEncoder | None = None
        self.profile = "default"
        self.layerdiffuse_offsets_merged = False
        self._controlnet_text_tokens = vcm.TEXT_TOKENS
        self._sources: dict[str, Path | None] = {}

    # -- loading ------------------------------------------------------------------------------

    def load_vcm(
        self,
        ip_adapter: str | os.PathLike | None,
        image_encoder: str | os.PathLike | None,
        face_adapter: str | os.PathLike | None,
        profile: str = "default",
    ) -> None:
        """Install the VCM processors and projections from the published checkpoints.

        Either adapter may be None (that branch is then unavailable). ``image_encoder`` may be None
        when the pipeline already holds one (e.g. loaded by ``from_pretrained``).
        ``profile="reference"`` keeps the published ControlNet text window (tokens 0..56) and the
        face key quirk.
        """
        self.profile = profile
        image_state = vcm.load_adapter_checkpoint(ip_adapter) if ip_adapter else None
        face_state = vcm.load_adapter_checkpoint(face_adapter) if face_adapter else None
        dtype, device = self.unet.dtype, self.unet.device
        if image_state is not None:
            if image_encoder is not None:
                encoder = CLIPVisionModelWithProjection.from_pretrained(image_encoder, dtype=dtype, local_files_only=True)
                # The published code used a default CLIPImageProcessor (224, OpenAI mean/std).
                self.register_modules(image_encoder=encoder.to(device), feature_extractor=CLIPImageProcessor())
            elif self.image_encoder is None:
                raise BadInputError("the IP-Adapter needs its CLIP image encoder folder")
            elif self.feature_extractor is None:
                self.register_modules(feature_extractor=CLIPImageProcessor())
            self.image_projection = self.unet._convert_ip_adapter_image_proj_to_diffusers(
                image_state["image_proj"], low_cpu_mem_usage=False
            ).to(device, dtype)
        if face_state is not None:
            self.face_projection = self.unet._convert_ip_adapter_image_proj_to_diffusers(
                face_state["image_proj"], low_cpu_mem_usage=False
            ).to(device, dtype)
        self._sources.update(ip_adapter=Path(ip_adapter) if ip_adapter else None, face_adapter=Path(face_adapter) if face_adapter else None)
        self.vcm_layout.face_key_from_value = profile == "reference"
        self.vcm_processors = vcm.install_vcm(
            self.unet,
            image_state["ip_adapter"] if image_state else None,
            face_state["ip_adapter"] if face_state else None,
            self.vcm_layout,
        )
        for processor in self.vcm_processors.values():
            processor.to(device, dtype)
        self._controlnet_text_tokens = vcm.REFERENCE_CONTROLNET_TEXT_TOKENS if profile == "reference" else vcm.TEXT_TOKENS
        self._install_vcm_processors()
        self.set_ip_adapter_scale(published_ip_scales())

    def unload_vcm(self) -> None:
        """Remove the VCM: diffusers' default attention everywhere, as before :meth:`load_vcm`."""
        self.unet.set_attn_processor(AttnProcessor2_0())
        for controlnet in self._controlnets():
            controlnet.set_attn_processor(AttnProcessor2_0())
        self.vcm_processors, self.image_projection, self.face_projection = {}, None, None
        self._sources.update(ip_adapter=None, face_adapter=None)
        self.vcm_layout.changed()

    def unload_ip_adapter(self) -> None:
        if self.vcm_processors:
            self.unload_vcm()
        else:
            super().unload_ip_adapter()

    def _controlnets(self) -> list:
        return list(getattr(self.controlnet, "nets", [self.controlnet]))

    def _install_vcm_processors(self) -> None:
        """(Re)place the VCM processors on the UNet's cross-attention and the text window on the
        ControlNet's, keeping whatever diffusers set elsewhere: attention slicing and QKV fusion
        replace every processor, and the VCM must survive them (sliced itself when slicing is on)."""
        processors = dict(self.unet.attn_processors)
        for name, processor in self.vcm_processors.items():
            current = processors[name]
            if current is not processor:
                processor.slice_size = getattr(current, "slice_size", None)
            processors[name] = processor
        self.unet.set_attn_processor(processors)
        for controlnet in self._controlnets():
            controlnet.set_attn_processor(
                {
                    name: _text_only(processor, self._controlnet_text_tokens) if name.endswith("attn2.processor") else processor
                    for name, processor in controlnet.attn_processors.items()
                }
            )

    def set_attention_slice(self, slice_size: int | str | None) -> None:
        super().set_attention_slice(slice_size)
        if self.vcm_processors:
            self._install_vcm_processors()

    def fuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        """diffusers' QKV fusion; the VCM cross-attention keeps its own (unfused) projections,
        whose keys and values are computed once per identity anyway."""
        super().fuse_qkv_projections(unet=unet, vae=vae)
        if unet and self.vcm_processors:
            self._install_vcm_processors()

    def set_ip_adapter_scale(self, block_scales: dict[str, float] | float, face_scale: float = 0.0) -> None:
        """Image-branch scale per block prefix (e.g. ``{"up_blocks.0.attentions.1": 1.0}``), or one
        scale for every layer; the face attention branch (0 in the method) likewise. Without the
        VCM loaded this is diffusers' own ``set_ip_adapter_scale``."""
        if not self.vcm_processors:
            super().set_ip_adapter_scale(block_scales)
            return
        if isinstance(block_scales, (int, float)):
            block_scales = {"down_blocks": block_scales, "mid_block": block_scales, "up_blocks": block_scales}
        vcm.set_ip_scales(self.vcm_processors, block_scales, face_scale)

    def load_layerdiffuse(self, folder: str | os.PathLike, encoder: bool = False) -> None:
        """Merge the attention offsets into the UNet (before any LoRA) and load the transparent
        decoder (and the encoder, which only refining needs)."""
        folder = Path(folder)
        if self.layerdiffuse_offsets_merged:
            logger.info("the UNet already carries LayerDiffuse's attention offsets; not merged again")
        else:
            layerdiffuse.merge_attention_offsets(self.unet, folder / "ld_diffusers_sdxl_attn.safetensors")
            self.layerdiffuse_offsets_merged = True
        self.transparent_decoder = layerdiffuse.TransparentDecoderUNet.from_single_file(
            folder / LAYERDIFFUSE_DECODER, self.unet.dtype
        ).to(self.unet.device)
        self._sources["layerdiffuse_decoder"] = folder / LAYERDIFFUSE_DECODER
        if encoder:
            self.load_transparent_encoder(folder)

    def load_transparent_encoder(self, folder: str | os.PathLike) -> None:
        """LayerDiffuse's transparent encoder (RGBA -> latent), which only refining needs."""
        self.transparent_encoder = layerdiffuse.TransparentOffsetEncoder.from_single_file(
            Path(folder) / LAYERDIFFUSE_ENCODER, self.unet.dtype
        ).to(self.unet.device)
        self._sources["layerdiffuse_encoder"] = Path(folder) / LAYERDIFFUSE_ENCODER

    def _extra_modules(self) -> list[torch.nn.Module]:
        """The method's modules that are not diffusers components (so ``to`` and offloading do
        not know them)."""
        modules = (self.image_projection, self.face_projection, self.transparent_decoder, self.transparent_encoder)
        return [module for module in modules if module is not None]

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)
        for module in self._extra_modules():
            module.to(self.unet.device, self.unet.dtype)
        return self

    def _place_extra_modules(self, device: torch.device) -> None:
        # Under model CPU offload the UNet waits on the CPU while the call runs on the accelerator;
        # the extras (a few MB of projections, the transparent decoder) stay on the accelerator.
        for module in self._extra_modules():
            if next(module.parameters()).device != device:
                module.to(device)

    # -- saving -------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """diffusers' folder layout; with the VCM or LayerDiffuse loaded, their published files,
        the profile and the current scales go to ``oneposetrans/``, and :meth:`from_pretrained`
        restores them. The UNet is saved with LayerDiffuse's offsets merged (they are not merged
        again on loading). A subject LoRA belongs to one identity and is refused: unload it first."""
        if next(self._subject_layers(), None) is not None:
            raise BadInputError("save_pretrained: unload_subject_lora() first (the subject LoRA belongs to one identity)")
        processors = dict(self.unet.attn_processors)
        if self.vcm_processors:
            # The VCM weights live in the processors; keep them out of the UNet's own weights file.
            self.unet.set_attn_processor(AttnProcessor2_0())
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            if self.vcm_processors:
                self.unet.set_attn_processor(processors)
        loaded = {
            "ip_adapter": self.image_projection,
            "face_adapter": self.face_projection,
            "layerdiffuse_decoder": self.transparent_decoder,
            "layerdiffuse_encoder": self.transparent_encoder,
        }
        files = {role: self._sources.get(role) for role, module in loaded.items() if module is not None}
        if not self.vcm_processors and not files:
            return
        folder = Path(save_directory) / EXTRAS_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        saved = {}
        for role, source in files.items():
            saved[role] = f"{role}{source.suffix}"
            shutil.copyfile(source, folder / (saved[role] + ".partial"))
            os.replace(folder / (saved[role] + ".partial"), folder / saved[role])
        config = {
            "profile": self.profile,
            "files": saved,
            "vcm": bool(self.vcm_processors),
            "ip_scales": {name: p.ip_scale for name, p in self.vcm_processors.items()},
            "face_scale": next(iter(self.vcm_processors.values())).face_scale if self.vcm_processors else 0.0,
            "layerdiffuse_offsets_merged": self.layerdiffuse_offsets_merged,
        }
        partial = folder / "config.json.partial"
        partial.write_text(json.dumps(config, indent=2))
        os.replace(partial, folder / "config.json")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """diffusers' ``from_pretrained``, then the VCM and LayerDiffuse a :meth:`save_pretrained`
        folder carries."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        extras = Path(pretrained_model_name_or_path) / EXTRAS_FOLDER / "config.json"
        if extras.is_file():
            pipe._load_saved_extras(extras.parent, json.loads(extras.read_text()))
        return pipe

    def _load_saved_extras(self, folder: Path, config: dict) -> None:
        files = {role: folder / name for role, name in config["files"].items()}
        self.layerdiffuse_offsets_merged = config["layerdiffuse_offsets_merged"]
        if config["vcm"]:
            self.load_vcm(files.get("ip_adapter"), None, files.get("face_adapter"), config["profile"])
            for name, processor in self.vcm_processors.items():
                processor.ip_scale = config["ip_scales"].get(name, 0.0)
                processor.face_scale = config["face_scale"]
        self.profile = config["profile"]
        dtype, device = self.unet.dtype, self.unet.device
        if "layerdiffuse_decoder" in files:
            self.transparent_decoder = layerdiffuse.TransparentDecoderUNet.from_single_file(files["layerdiffuse_decoder"], dtype).to(device)
        if "layerdiffuse_encoder" in files:
            self.transparent_encoder = layerdiffuse.TransparentOffsetEncoder.from_single_file(files["layerdiffuse_encoder"], dtype).to(device)
        self._sources.update({role: path for role, path in files.items() if role.startswith("layerdiffuse")})

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
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = DEFAULT_NEGATIVE_PROMPT,
        ip_adapter_image: PIL.Image.Image | np.ndarray | torch.Tensor | list | None = None,
        face_embedding: np.ndarray | torch.Tensor | None = None,
        do_classifier_free_guidance: bool = True,
        *,
        prompt_2: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        clip_skip: int | None = None,
        lora_scale: float | None = None,
    ) -> vcm.IdentityConditioning:
        """Text, image-prompt and face tokens of one identity: ``[text 77 | image 4 | face 16]``.

        The text part is diffusers' ``encode_prompt`` of the same arguments. The unconditional
        branch gets the negative prompt, zero image embeds and zero face embeds.
        ``ip_adapter_image_embeds`` is diffusers' form (a list with one tensor of CLIP image
        embeds, the negative half first under guidance) and replaces ``ip_adapter_image``."""
        device, notes = self._execution_device, []
        prompt, negative_prompt = _single(prompt, "prompt"), _single(negative_prompt, "negative_prompt")
        prompt_embeds, negative_embeds, pooled, negative_pooled = self.encode_prompt(
            prompt,
            _single(prompt_2, "prompt_2"),
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=do_classifier_free_guidance,
            negative_prompt=negative_prompt,
            negative_prompt_2=_single(negative_prompt_2, "negative_prompt_2"),
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )
        if prompt_embeds.shape[0] != 1:
            raise BadInputError(f"one identity per call: got {prompt_embeds.shape[0]} prompt embeddings, give one")
        identity_parts, negative_parts = [prompt_embeds], [negative_embeds]
        image_tokens = face_tokens = 0
        wants_image = any(p.ip_scale != 0 for p in self.vcm_processors.values())
        image_embeds = None
        if self.image_projection is not None and wants_image:
            image_embeds = self._image_prompt_embeds(ip_adapter_image, ip_adapter_image_embeds, do_classifier_free_guidance)
        if image_embeds is not None:
            identity_parts.append(self.image_projection(image_embeds[0]))
            negative_parts.append(self.image_projection(image_embeds[1]))
            image_tokens = identity_parts[-1].shape[1]
        face_position = negative_face_position = None
        if face_embedding is not None and self.face_projection is not None:
            face_position, negative_face_position = self._face_positions(prompt, negative_prompt, notes)
            if face_position is not None:
                face = torch.as_tensor(np.asarray(face_embedding), dtype=self.unet.dtype, device=device).reshape(1, 1, -1)
                identity_parts.append(self.face_projection(face))
                negative_parts.append(self.face_projection(torch.zeros_like(face)))
                face_tokens = identity_parts[-1].shape[1]
        else:
            notes += self._face_notes(face_embedding)
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

    def _image_prompt_embeds(self, image, embeds: list[torch.Tensor] | None, do_cfg: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """CLIP image embeds of the image prompt: (conditional, unconditional), one row each."""
        device, dtype = self._execution_device, self.unet.dtype
        if embeds is not None:
            if len(embeds) != 1:
                raise BadInputError(f"the VCM has one image prompt: ip_adapter_image_embeds has {len(embeds)} tensors, give one")
            embeds = embeds[0].to(device, dtype)
            negative, positive = embeds.chunk(2) if do_cfg else (torch.zeros_like(embeds), embeds)
            return positive[:1], negative[:1]
        if image is None:
            return None
        if isinstance(image, (list, tuple)):
            if len(image) != 1:
                raise BadInputError(f"the VCM has one image prompt: ip_adapter_image lists {len(image)} images, give one")
            image = image[0]
        if isinstance(image, PIL.Image.Image):
            # convert("RGB") drops alpha without compositing, as transformers' processor did.
            image = image.convert("RGB")
        pixels = self.feature_extractor(image, return_tensors="pt").pixel_values
        positive = self.image_encoder(pixels.to(device, self.image_encoder.dtype)).image_embeds
        return positive, torch.zeros_like(positive)

    def _face_notes(self, face_embedding) -> list[str]:
        if face_embedding is None and self.face_projection is not None:
            return ["no face embedding: generated without face tokens"]
        if face_embedding is not None and self.face_projection is None:
            return ["face_embedding given, but no InstantID adapter is loaded: generated without it"]
        return []

    def _face_positions(self, prompt: str | None, negative_prompt: str | None, notes: list[str]) -> tuple[int | None, int | None]:
        if self.profile == "reference":
            # Published: position 4 in both halves, whatever the words are.
            return vcm.REFERENCE_FACE_POSITION, vcm.REFERENCE_FACE_POSITION
        if prompt is None:
            notes.append('the face embedding replaces the value of the prompt\'s "face" token: with prompt_embeds '
                         "and no prompt text there is none to find; generated without the face embedding")
            return None, None
        position = vcm.face_token_position(self.tokenizer, prompt)
        if position is None:
            message = f'caption has no word "face" ({prompt[:60]!r}): generated without the face embedding'
            logger.warning(message)
            notes.append(message)
            return None, None
        negative = vcm.face_token_position(self.tokenizer, negative_prompt) if negative_prompt is not None else None
        return position, negative

    def _uses_vcm(self, ip_adapter_image, ip_adapter_image_embeds, face_embedding) -> bool:
        image = (
            self.image_projection is not None
            and (ip_adapter_image is not None or ip_adapter_image_embeds is not None)
            and any(p.ip_scale != 0 for p in self.vcm_processors.values())
        )
        return image or (self.face_projection is not None and face_embedding is not None)

    # -- generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | list | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = DEFAULT_NEGATIVE_PROMPT,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PIL.Image.Image | np.ndarray | torch.Tensor | list | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        face_embedding: np.ndarray | torch.Tensor | None = None,
        identity: vcm.IdentityConditioning | None = None,
        face_keypoints_image: PIL.Image.Image | None = None,
        identitynet_conditioning_scale: float = 0.8,
        transparent: bool | None = None,
        batch_size: int | None = None,
        **kwargs,
    ) -> OnePoseTransPipelineOutput | tuple:
        r"""Render one identity in every target pose of ``image``.

        Every argument of ``StableDiffusionXLControlNetPipeline.__call__`` is accepted with the
        same meaning; two defaults are the method's (25 steps and the published negative prompt;
        guidance 5.0 is both the parent's and the method's). With no VCM input, no ``identity``
        and no LayerDiffuse, the call is the parent's call.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                The caption. One caption is one identity, shared by every pose in `image`; a list
                gives one caption per pose (without VCM inputs), as in the parent. Leave it out
                when passing `prompt_embeds` or `identity`.
            prompt_2 (`str` or `list[str]`, *optional*):
                Text for the second tokenizer and text encoder; `prompt` when not given.
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, or a list of them):
                The target pose maps (OpenPose renderings), in any form the parent accepts: PIL
                images, HWC/NHWC arrays in [0, 1], CHW/NCHW tensors in [0, 1]. Each pose is one
                target. With several ControlNets and no `face_keypoints_image`, the parent's form:
                one condition per ControlNet.
            height (`int`, *optional*):
                Output height in pixels; the pose maps are resized to it. Default: the pose's height.
            width (`int`, *optional*):
                Output width in pixels; the pose maps are resized to it. Default: the pose's width.
            num_inference_steps (`int`, *optional*, defaults to 25):
                Denoising steps (the method's setting; the parent's default is 50).
            timesteps (`list[int]`, *optional*):
                Explicit descending timesteps for schedulers that take them, instead of
                `num_inference_steps`.
            sigmas (`list[float]`, *optional*):
                Explicit sigmas for schedulers that take them, instead of `num_inference_steps`.
            denoising_end (`float`, *optional*):
                Stop after this fraction of the schedule (0 to 1) and return a partly denoised
                result, for an ensemble-of-experts refiner.
            guidance_scale (`float`, *optional*, defaults to 5.0):
                Classifier-free guidance weight; guidance is off at 1 or below. The VCM's
                unconditional branch has zero image and face embeddings.
            negative_prompt (`str` or `list[str]`, *optional*, defaults to `"low quality, bad quality"`):
                Text of the unconditional branch (the published setting; the parent's default is
                none). Dropped when `negative_prompt_embeds` is passed and this is left at its default.
            negative_prompt_2 (`str` or `list[str]`, *optional*):
                Negative text for the second text encoder; `negative_prompt` when not given.
            num_images_per_prompt (`int`, *optional*, defaults to 1):
                Images per target pose (per prompt in the parent's forms); they come out grouped by pose.
            eta (`float`, *optional*, defaults to 0.0):
                DDIM's eta; other schedulers ignore it.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                One generator for the whole call, or one per output image (poses x
                `num_images_per_prompt`, in output order), as in the parent. The published flow
                seeds each target's generator with the same seed.
            latents (`torch.Tensor`, *optional*):
                Initial noise, one row per output image; drawn from `generator` when not given.
            prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed text embeddings (from `encode_prompt`) instead of `prompt`. The face
                embedding needs the prompt text to find its token, so it is skipped (with a note)
                when only embeddings are given, except in the reference profile.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed negative text embeddings instead of `negative_prompt`.
            pooled_prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed pooled text embeddings; needed with `prompt_embeds`.
            negative_pooled_prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed pooled negative text embeddings; needed with `negative_prompt_embeds`.
            ip_adapter_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of one, *optional*):
                The image prompt. With the VCM loaded, the person (on black, as the method uses
                it) whose CLIP embedding becomes the VCM's image tokens, scaled per block by
                `set_ip_adapter_scale`. Without it, the parent's IP-Adapter input.
            ip_adapter_image_embeds (`list[torch.Tensor]`, *optional*):
                Precomputed CLIP image embeddings in the parent's form (one tensor per adapter,
                `(batch, num_images, dim)`, the negative half first under guidance); with the VCM
                loaded a list of one tensor, used instead of `ip_adapter_image`.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"`, `"pt"` or `"latent"`. Transparent results are RGBA (`"pt"`:
                float in [0, 1]; `"np"`: uint8); `"latent"` returns the latents undecoded.
            return_dict (`bool`, *optional*, defaults to `True`):
                Return a [`OnePoseTransPipelineOutput`]; otherwise a tuple `(images, notes)`.
            cross_attention_kwargs (`dict`, *optional*):
                Passed to the attention processors; its `"scale"` is the LoRA scale, as in the parent.
            controlnet_conditioning_scale (`float` or `list[float]`, *optional*, defaults to 1.0):
                Weight of the pose ControlNet's residuals (a list with several ControlNets).
            guess_mode (`bool`, *optional*, defaults to `False`):
                The ControlNet sees only the conditional branch, as in the parent.
            control_guidance_start (`float` or `list[float]`, *optional*, defaults to 0.0):
                Fraction of the steps after which the ControlNet starts acting.
            control_guidance_end (`float` or `list[float]`, *optional*, defaults to 1.0):
                Fraction of the steps after which the ControlNet stops acting.
            original_size (`tuple[int, int]`, *optional*):
                SDXL micro-conditioning: the original image size, `(height, width)`; the output size when not given.
            crops_coords_top_left (`tuple[int, int]`, *optional*, defaults to (0, 0)):
                SDXL micro-conditioning: the crop's top-left corner.
            target_size (`tuple[int, int]`, *optional*):
                SDXL micro-conditioning: the target size; the output size when not given.
            negative_original_size (`tuple[int, int]`, *optional*):
                `original_size` for the unconditional branch.
            negative_crops_coords_top_left (`tuple[int, int]`, *optional*, defaults to (0, 0)):
                `crops_coords_top_left` for the unconditional branch.
            negative_target_size (`tuple[int, int]`, *optional*):
                `target_size` for the unconditional branch.
            clip_skip (`int`, *optional*):
                Number of final CLIP text-encoder layers to skip.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                Called after every denoising step as `callback(pipe, step, timestep, tensors)`, as
                in the parent; it may return replacements for the tensors. Steps count from 0
                again for each batch of poses (see `batch_size`).
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["latents"]`):
                The tensors the callback receives, from the parent's `_callback_tensor_inputs`.
            face_embedding (`np.ndarray` or `torch.Tensor`, *optional*):
                The person's 512-d ArcFace embedding (InstantID); its pooled face value replaces
                the value of the prompt's "face" token in every cross-attention layer.
            identity ([`IdentityConditioning`], *optional*):
                The output of `encode_identity`, to render one identity over several calls without
                encoding it again; replaces the prompt, image-prompt and face arguments.
            face_keypoints_image (`PIL.Image.Image`, *optional*):
                With InstantID's IdentityNet as a second ControlNet: its face-keypoint condition,
                shared by every pose (one pose per UNet batch then).
            identitynet_conditioning_scale (`float`, *optional*, defaults to 0.8):
                The IdentityNet's ControlNet weight.
            transparent (`bool`, *optional*):
                Decode RGBA with LayerDiffuse; defaults to True when `load_layerdiffuse` was called.
            batch_size (`int`, *optional*):
                Poses per UNet batch; all of them in one batch when not given (as the parent).

        Returns:
            [`OnePoseTransPipelineOutput`] or `tuple`: the images (per pose,
            `num_images_per_prompt` of them) and notes on what the call could not use.
        """
        num_images_per_prompt = num_images_per_prompt or 1
        if negative_prompt is DEFAULT_NEGATIVE_PROMPT and negative_prompt_embeds is not None:
            negative_prompt = None  # the caller's embeddings replace the published default
        transparent = self.transparent_decoder is not None if transparent is None else transparent
        if transparent and self.transparent_decoder is None:
            raise BadInputError("transparent decoding needs load_layerdiffuse() first")
        self._place_extra_modules(self._execution_device)
        identitynet = len(self._controlnets()) > 1 and face_keypoints_image is not None
        # Several ControlNets without the face keypoints: the parent's form, one condition per ControlNet.
        poses = [image] if len(self._controlnets()) > 1 and not identitynet else _control_images(image)
        if not poses:
            raise BadInputError("no target pose given")
        do_cfg = guidance_scale > 1.0 and self.unet.config.time_cond_proj_dim is None
        if identity is None and self._uses_vcm(ip_adapter_image, ip_adapter_image_embeds, face_embedding):
            identity = self.encode_identity(
                prompt, negative_prompt, ip_adapter_image, face_embedding, do_cfg,
                prompt_2=prompt_2, negative_prompt_2=negative_prompt_2,
                prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                ip_adapter_image_embeds=ip_adapter_image_embeds,
                clip_skip=clip_skip, lora_scale=(cross_attention_kwargs or {}).get("scale"),
            )
        notes = list(identity.notes) if identity is not None else self._face_notes(face_embedding)
        texts = {
            "prompt": prompt, "prompt_2": prompt_2, "negative_prompt": negative_prompt, "negative_prompt_2": negative_prompt_2,
            "prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds,
            "pooled_prompt_embeds": pooled_prompt_embeds, "negative_pooled_prompt_embeds": negative_pooled_prompt_embeds,
        }
        if identity is not None:
            texts = {
                "prompt_embeds": identity.prompt_embeds, "negative_prompt_embeds": identity.negative_prompt_embeds,
                "pooled_prompt_embeds": identity.pooled_prompt_embeds,
                "negative_pooled_prompt_embeds": identity.negative_pooled_prompt_embeds,
            }
        # Without the VCM's image branch, the image prompt is the parent's IP-Adapter input.
        parents_image_prompt = identity is None and self.image_projection is None
        prompts = _prompt_count(texts)
        if len(poses) > 1 and prompts not in (1, len(poses)):
            raise BadInputError(f"{prompts} prompts for {len(poses)} poses: give one prompt, one per pose, or one pose")
        per_pose = num_images_per_prompt
        if len(poses) > 1 and isinstance(generator, list) and len(generator) != len(poses) * per_pose:
            raise BadInputError(f"{len(generator)} generators for {len(poses)} poses x {per_pose} images per prompt")
        step = 1 if identitynet else batch_size or len(poses)
        shared = dict(
            height=height, width=width, num_inference_steps=num_inference_steps, timesteps=timesteps, sigmas=sigmas,
            denoising_end=denoising_end, guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt,
            eta=eta, output_type="latent" if transparent else output_type, return_dict=True,
            cross_attention_kwargs=cross_attention_kwargs, guess_mode=guess_mode,
            control_guidance_start=control_guidance_start, control_guidance_end=control_guidance_end,
            original_size=original_size, crops_coords_top_left=crops_coords_top_left, target_size=target_size,
            negative_original_size=negative_original_size, negative_crops_coords_top_left=negative_crops_coords_top_left,
            negative_target_size=negative_target_size, clip_skip=clip_skip,
            ip_adapter_image=ip_adapter_image if parents_image_prompt else None,
            ip_adapter_image_embeds=ip_adapter_image_embeds if parents_image_prompt else None,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, **kwargs,
        )
        decode_transparent = transparent and output_type != "latent"
        results = []
        for start in range(0, len(poses), step):
            chunk = poses[start : start + step]
            whole = len(chunk) == len(poses)  # one batch: the caller's arguments go through as given
            rows = slice(start * per_pose, (start + len(chunk)) * per_pose)
            control_image, control_scale = image if whole else chunk, controlnet_conditioning_scale
            if identitynet:
                keypoints = face_keypoints_image.resize(_image_size(chunk[0]))
                control_image = [chunk[0], keypoints]
                control_scale = [controlnet_conditioning_scale, identitynet_conditioning_scale]
            self._set_layout(identity, len(chunk) * per_pose, do_cfg)
            try:
                output = super().__call__(
                    image=control_image,
                    controlnet_conditioning_scale=control_scale,
                    generator=generator if whole or not isinstance(generator, list) else generator[rows],
                    latents=latents if whole or latents is None else latents[rows],
                    **_texts_for(texts, start, len(chunk), prompts, len(poses)),
                    **shared,
                )
            finally:
                self._set_layout(None, 0, do_cfg)
            results.append(self._decode_transparent(output.images, output_type) if decode_transparent else output.images)

        images = _concatenate(results)
        if not return_dict:
            return (images, notes)
        return OnePoseTransPipelineOutput(images=images, notes=notes)

    @contextlib.contextmanager
    def identity_layout(self, identity: vcm.IdentityConditioning, rows: int, do_cfg: bool):
        """Tell the VCM processors how ``identity``'s tokens are laid out while another diffusers
        loop (the refining img2img) runs the UNet with its embeddings."""
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


def _concatenate(results: list):
    if isinstance(results[0], list):
        return [item for chunk in results for item in chunk]
    if isinstance(results[0], np.ndarray):
        return np.concatenate(results)
    return torch.cat(results)


def _single(value, name: str):
    """One identity's text: a string, or a list holding one."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise BadInputError(f"one identity per call: {name} lists {len(value)} texts, give one")
        return value[0]
    return value


def _control_images(image) -> list:
    """The target poses of ``image``, one entry per pose: a 4-D array or tensor is a batch of poses."""
    if image is None:
        return []
    poses = []
    for item in image if isinstance(image, (list, tuple)) else [image]:
        if isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4:
            poses.extend(item)
        else:
            poses.append(item)
    return poses


def _image_size(image) -> tuple[int, int]:
    """(width, height) of a PIL image, an HWC array or a CHW tensor."""
    if isinstance(image, PIL.Image.Image):
        return image.size
    if isinstance(image, np.ndarray):
        return image.shape[1], image.shape[0]
    return image.shape[-1], image.shape[-2]


def _prompt_count(texts: dict) -> int:
    """How many prompts the call's text arguments hold (the parent's batch size)."""
    prompt, embeds = texts.get("prompt"), texts.get("prompt_embeds")
    if isinstance(prompt, (list, tuple)):
        return len(prompt)
    if prompt is None and embeds is not None:
        return embeds.shape[0]
    return 1


def _texts_for(texts: dict, start: int, count: int, prompts: int, poses: int) -> dict:
    """The text arguments for poses ``start .. start+count``: one shared prompt is repeated for
    each pose of the batch (the parent pairs prompts and images one to one); one prompt per pose
    is sliced."""
    if count == poses and (prompts != 1 or count == 1):
        return texts
    chunk = {}
    for name, value in texts.items():
        if value is None:
            chunk[name] = value
        elif prompts == 1:
            if isinstance(value, torch.Tensor):
                chunk[name] = value.repeat(count, *([1] * (value.ndim - 1)))
            else:
                chunk[name] = [_single(value, name)] * count
        elif isinstance(value, str):
            chunk[name] = value  # the parent repeats a single negative prompt for every prompt
        else:
            chunk[name] = value[start : start + count]
    return chunk


def _text_only(processor, text_tokens: int) -> vcm.TextOnlyAttnProcessor:
    """``processor`` restricted to the text tokens (unwrapped first when it already is)."""
    inner = processor.inner if isinstance(processor, vcm.TextOnlyAttnProcessor) else processor
    return vcm.TextOnlyAttnProcessor(text_tokens, inner)
