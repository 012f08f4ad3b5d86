"""``StableDiffusionXLOnePoseTransPipeline``: SDXL + OpenPose ControlNet + the Visual Consistency
Module + LayerDiffuse transparency (OnePoseTrans, arXiv 2409.09593, section 3).

A diffusers ``StableDiffusionXLControlNetPipeline`` in every respect (its ``__call__`` arguments,
loading and saving, offloading, slicing, schedulers), with the method on top:

* one call renders one identity in N target poses: the prompt, image-prompt and face embeddings
  are computed once and shared by every pose (``image`` may list several poses for one prompt);
* the VCM is a registered component (:class:`~oneposetrans.vcm.VisualConsistencyModule`) whose
  projections sit in the UNet's ``encoder_hid_proj`` and whose attention processors receive the
  text states and the image-prompt and face tokens as diffusers' IP-Adapter processors do; the
  ControlNet reads the text alone;
* LayerDiffuse's transparent decoder and encoder are registered components too, and decode RGBA.

With none of the method's inputs given (no VCM image or face, no ``identity``, no LayerDiffuse),
a call is the parent's call with the same arguments.

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
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionXLControlNetPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from diffusers.models.resnet import ResnetBlock2D
from diffusers.pipelines.controlnet.pipeline_controlnet_sd_xl import retrieve_timesteps
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput, deprecate
from diffusers.utils.torch_utils import is_compiled_module, is_torch_version
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from oneposetrans import layerdiffuse
from oneposetrans.vcm import (
    REFERENCE_FACE_POSITION,
    TEXT_TOKENS,
    IdentityConditioning,
    TextWindowAttnProcessor,
    VCMAttnProcessor,
    VisualConsistencyModule,
    face_token_position,
    install as install_vcm,
    set_ip_scales,
    uninstall as uninstall_vcm,
    unwrapped,
)
from oneposetrans.profiles import Profile, profile_named
from oneposetrans.settings import NEGATIVE_PROMPT

logger = logging.getLogger(__name__)

DEFAULT_NEGATIVE_PROMPT = NEGATIVE_PROMPT
SUBJECT_ADAPTER = "subject"
REPEATED_BLOCKS = (BasicTransformerBlock, ResnetBlock2D)
"""What ``compile_blocks`` compiles: between them nearly all of a UNet's and a ControlNet's work."""
LAYERDIFFUSE_OFFSETS = "ld_diffusers_sdxl_attn.safetensors"
LAYERDIFFUSE_DECODER = "ld_diffusers_sdxl_vae_transparent_decoder.safetensors"
LAYERDIFFUSE_ENCODER = "ld_diffusers_sdxl_vae_transparent_encoder.safetensors"


@dataclass
class OnePoseTransPipelineOutput(BaseOutput):
    """``images``: per target pose, ``num_images_per_prompt`` images (RGBA when decoded
    transparently, else RGB) in the requested ``output_type``.
    ``notes``: what the call could not use (no face token, no face), in words."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    notes: list[str]


class StableDiffusionXLOnePoseTransPipeline(StableDiffusionXLControlNetPipeline):
    r"""The OnePoseTrans generator: ``StableDiffusionXLControlNetPipeline`` with the Visual
    Consistency Module and LayerDiffuse.

    Args (besides the parent's):
        vcm ([`~oneposetrans.vcm.VisualConsistencyModule`], *optional*):
            The VCM's weights (``load_vcm`` reads them from the published files).
        transparent_decoder ([`~oneposetrans.layerdiffuse.TransparentDecoderUNet`], *optional*):
            LayerDiffuse's decoder of RGBA (``load_layerdiffuse``).
        transparent_encoder ([`~oneposetrans.layerdiffuse.TransparentOffsetEncoder`], *optional*):
            LayerDiffuse's encoder of RGBA, which only refining needs.
        profile (`str` or [`~oneposetrans.profiles.Profile`], defaults to `"default"`):
            `"reference"` computes what the published code did (README *Profiles*).
        layerdiffuse_offsets_merged (`bool`):
            The UNet's weights already carry LayerDiffuse's attention offsets.
    """

    _optional_components = [
        *StableDiffusionXLControlNetPipeline._optional_components,
        "vcm",
        "transparent_decoder",
        "transparent_encoder",
    ]

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
        vcm: VisualConsistencyModule | None = None,
        transparent_decoder: layerdiffuse.TransparentDecoderUNet | None = None,
        transparent_encoder: layerdiffuse.TransparentOffsetEncoder | None = None,
        profile: str | Profile = "default",
        layerdiffuse_offsets_merged: bool = False,
    ):
        super().__init__(
            vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, controlnet, scheduler,
            force_zeros_for_empty_prompt, add_watermarker, feature_extractor, image_encoder,
        )
        self.register_modules(vcm=vcm, transparent_decoder=transparent_decoder, transparent_encoder=transparent_encoder)
        self._profile = profile_named(profile) if isinstance(profile, str) else profile
        self.register_to_config(profile=self._profile.name, layerdiffuse_offsets_merged=layerdiffuse_offsets_merged)
        if vcm is not None:
            self._install_vcm()

    @property
    def profile(self) -> Profile:
        return self._profile

    @property
    def vcm_processors(self) -> dict[str, VCMAttnProcessor]:
        """The UNet's VCM processors by name; empty without the VCM."""
        return {name: p for name, p in self.unet.attn_processors.items() if isinstance(p, VCMAttnProcessor)}

    # -- loading ------------------------------------------------------------------------------

    def load_vcm(
        self,
        ip_adapter: str | os.PathLike | None,
        image_encoder: str | os.PathLike | None,
        face_adapter: str | os.PathLike | None,
    ) -> None:
        """Register the VCM from the published checkpoints and install it in the UNet, at the
        published image-prompt scales.

        Either adapter may be None (that branch is then unavailable). ``image_encoder`` may be None
        when the pipeline already holds one (e.g. loaded by ``from_pretrained``).
        """
        if ip_adapter is not None:
            if image_encoder is not None:
                encoder = CLIPVisionModelWithProjection.from_pretrained(image_encoder, dtype=self.unet.dtype, local_files_only=True)
                # The published code used a default CLIPImageProcessor (224, OpenAI mean/std).
                self.register_modules(image_encoder=encoder.to(self.unet.device), feature_extractor=self._image_processor())
            elif self.image_encoder is None:
                raise ValueError("the IP-Adapter needs its CLIP image encoder folder")
            elif self.feature_extractor is None:
                self.register_modules(feature_extractor=self._image_processor())
        self.register_modules(vcm=VisualConsistencyModule.from_published(self.unet, ip_adapter, face_adapter))
        self._install_vcm()

    def _image_processor(self):
        """The image prompt's CLIP preprocessing (224, OpenAI mean/std): transformers 4.37's
        PIL-backed resize in the reference profile, which transformers 5 keeps as
        ``CLIPImageProcessorPil`` (its default resizes with torchvision, up to one 8-bit level apart)."""
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil() if self.profile.clip_resize == "PIL" else CLIPImageProcessor()

    def _install_vcm(self) -> None:
        """The VCM into the UNet, and the profile's text window on the ControlNet's cross-attention;
        again after diffusers replaces every processor (attention slicing, QKV fusion), keeping
        the slicing it set."""
        install_vcm(
            self.unet, self.vcm, face_key_from_value=self.profile.face_key == "value",
            face_together=self.profile.face_projection == "one batch",
        )
        window = self.profile.controlnet_text_tokens
        for controlnet in self._controlnets():
            controlnet.set_attn_processor(
                {
                    name: TextWindowAttnProcessor(window, unwrapped(processor))
                    if name.endswith("attn2.processor") and window < TEXT_TOKENS
                    else unwrapped(processor)
                    for name, processor in controlnet.attn_processors.items()
                }
            )

    def unload_vcm(self) -> None:
        """Remove the VCM: diffusers' default attention everywhere, as before :meth:`load_vcm`."""
        uninstall_vcm(self.unet)
        for controlnet in self._controlnets():
            controlnet.set_attn_processor(AttnProcessor2_0())
        self.register_modules(vcm=None)

    def unload_ip_adapter(self) -> None:
        if self.vcm is not None:
            self.unload_vcm()
        else:
            super().unload_ip_adapter()

    def _controlnets(self) -> list:
        return list(getattr(self.controlnet, "nets", [self.controlnet]))

    def set_attention_slice(self, slice_size: int | str | None) -> None:
        super().set_attention_slice(slice_size)
        if self.vcm is not None:
            self._install_vcm()

    def fuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        """diffusers' QKV fusion; the VCM cross-attention keeps its own (unfused) projections,
        whose keys and values are computed once per identity anyway."""
        super().fuse_qkv_projections(unet=unet, vae=vae)
        if unet and self.vcm is not None:
            self._install_vcm()

    def set_ip_adapter_scale(self, block_scales: dict[str, float] | float, face_scale: float = 0.0) -> None:
        """Image-branch scale per block prefix (e.g. ``{"up_blocks.0.attentions.1": 1.0}``), or one
        scale for every layer; the face attention branch (0 in the method) likewise. The scales
        are the VCM's config, so they are saved with it. Without the VCM loaded this is diffusers'
        own ``set_ip_adapter_scale``."""
        if self.vcm is None:
            super().set_ip_adapter_scale(block_scales)
            return
        if isinstance(block_scales, (int, float)):
            block_scales = {"down_blocks": block_scales, "mid_block": block_scales, "up_blocks": block_scales}
        self.vcm.register_to_config(ip_scales=dict(block_scales), face_scale=face_scale)
        set_ip_scales(self.vcm_processors, block_scales, face_scale)

    def compile_blocks(self, **options) -> list[torch.nn.Module]:
        """Regional compilation (diffusers' ``compile_repeated_blocks``): every block the UNet and
        the ControlNet(s) repeat (:data:`REPEATED_BLOCKS`: the transformer and ResNet blocks)
        through ``torch.compile``, each block class compiled once for all its instances of one
        shape, in seconds rather than the minutes a whole UNet takes. The VCM's cross-attention
        stays eager inside the UNet's transformer blocks (:class:`~oneposetrans.vcm.VCMAttnProcessor`),
        and the subject LoRA is merged into the weights in place, so a new identity (LoRA, image
        prompt, face) reuses the compiled code. ``options`` go to ``torch.compile`` (default:
        ``dynamic=False``). Returns the compiled blocks."""
        options = {"dynamic": False, **options}
        # A compiled block has one variant per width and batch (1 or 4 targets, with CFG), and the
        # transformer blocks two parts around the eager cross-attention: more than dynamo's 8.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        controlnets = self.controlnet.nets if isinstance(self.controlnet, MultiControlNetModel) else [self.controlnet]
        blocks = [m for model in (self.unet, *controlnets) for m in model.modules() if isinstance(m, REPEATED_BLOCKS)]
        for block in blocks:
            block.compile(**options)
        return blocks

    def load_layerdiffuse(self, folder: str | os.PathLike, encoder: bool = False) -> None:
        """Merge the attention offsets into the UNet (before any LoRA) and register the transparent
        decoder (and the encoder, which only refining needs)."""
        folder = Path(folder)
        if self.config.layerdiffuse_offsets_merged:
            logger.info("the UNet already carries LayerDiffuse's attention offsets; not merged again")
        else:
            layerdiffuse.merge_attention_offsets(self.unet, folder / LAYERDIFFUSE_OFFSETS)
            self.register_to_config(layerdiffuse_offsets_merged=True)
        decoder = layerdiffuse.TransparentDecoderUNet.from_single_file(folder / LAYERDIFFUSE_DECODER, self.unet.dtype)
        self.register_modules(transparent_decoder=decoder.to(self.unet.device))
        if encoder:
            self.load_transparent_encoder(folder)

    def load_transparent_encoder(self, folder: str | os.PathLike) -> None:
        """LayerDiffuse's transparent encoder (RGBA -> latent), which only refining needs."""
        encoder = layerdiffuse.TransparentOffsetEncoder.from_single_file(Path(folder) / LAYERDIFFUSE_ENCODER, self.unet.dtype)
        self.register_modules(transparent_encoder=encoder.to(self.unet.device))

    # -- saving -------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """diffusers' folder layout, the VCM and LayerDiffuse as component folders of their own;
        ``from_pretrained`` of that folder restores them (the UNet is saved with LayerDiffuse's
        offsets merged, and they are not merged again). A subject LoRA belongs to one identity and
        is refused: unload it first."""
        if getattr(self, "_merged_subject_layers", None) or next(self._subject_layers(), None) is not None:
            raise ValueError("save_pretrained: unload_subject_lora() first (the subject LoRA belongs to one identity)")
        if self.vcm is None:
            super().save_pretrained(save_directory, **kwargs)
            return
        # The VCM's weights are its own component's; the UNet is saved as diffusers knows it.
        processors, projection = self.unet.attn_processors, self.unet.encoder_hid_proj
        uninstall_vcm(self.unet)
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self.unet.encoder_hid_proj = projection
            self.unet.config.encoder_hid_dim_type = "ip_image_proj"
            self.unet.set_attn_processor(processors)

    # -- the subject LoRA ---------------------------------------------------------------------

    def load_subject_lora(self, path: str | os.PathLike, block_scales: dict | float, fuse: bool = False) -> None:
        """The identity's LoRA (diffusers format) with block-wise scales ("weight injection").

        ``fuse`` merges it, scales included, into the UNet's weights for the denoising loop, so
        that no step pays the 560 adapters' extra matrix products; :meth:`unload_subject_lora`
        then restores the exact original weights (an unmerge alone would leave rounding behind,
        and it would build up over the identities of a run). A plain UNet LoRA is merged straight
        from its file, the sum peft's merge computes, without wrapping 560 layers in adapters
        first (seconds per identity at full size, and wrappers that a compiled UNet would see);
        anything else (text-encoder layers, DoRA, biases) goes through peft."""
        path = Path(path)
        factors = self._subject_lora_factors(path, block_scales) if fuse else None
        if factors is not None:
            self._merge_subject_factors(factors)
        else:
            self._load_subject_lora_with_peft(path, block_scales, fuse)

    def _load_subject_lora_with_peft(self, path: Path, block_scales: dict | float, fuse: bool) -> None:
        self.load_lora_weights(path.parent, weight_name=path.name, adapter_name=SUBJECT_ADAPTER)
        # Pipeline-level dicts are keyed by component; a bare block dict would be dropped.
        self.set_adapters([SUBJECT_ADAPTER], adapter_weights=[{"unet": block_scales}])
        if fuse:
            self._fuse_subject_lora()

    def unload_subject_lora(self) -> None:
        for name in getattr(self, "_merged_subject_layers", []):
            self.unet.get_submodule(name).weight.data.copy_(self._unfused_weights[name], non_blocking=True)
        self._merged_subject_layers = []
        for name, module in self._fused_subject_layers():
            module.get_base_layer().weight.data.copy_(self._unfused_weights[name])
            module.merged_adapters.remove(SUBJECT_ADAPTER)
        if SUBJECT_ADAPTER in self.get_list_adapters().get("unet", []):
            self.delete_adapters(SUBJECT_ADAPTER)

    def _subject_lora_factors(self, path: Path, block_scales: dict | float) -> dict[str, tuple] | None:
        """``{layer: (B, A, scaling)}`` of a plain UNet LoRA file, with peft's scaling (block scale
        x alpha / rank, alpha = rank where the file has none); None when the file holds more."""
        from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales
        from diffusers.utils import convert_unet_state_dict_to_peft

        state, alphas = self.lora_state_dict(path.parent, weight_name=path.name)
        if any(not key.startswith("unet.") for key in state):
            return None
        state = convert_unet_state_dict_to_peft({key[len("unet."):]: value for key, value in state.items()})
        layers = {key.rsplit(".lora_", 1)[0] for key in state}
        if any(f"{layer}.lora_{part}.weight" not in state for layer in layers for part in "AB") or len(state) != 2 * len(layers):
            return None
        alphas = {key[len("unet."):].removesuffix(".alpha"): float(value) for key, value in (alphas or {}).items()}
        scales = _maybe_expand_lora_scales(self.unet, [block_scales])[0]
        factors = {}
        for layer in sorted(layers):
            down, up = state[f"{layer}.lora_A.weight"], state[f"{layer}.lora_B.weight"]
            module = self.unet.get_submodule(layer)
            if not isinstance(module, torch.nn.Linear) or down.dim() != 2:
                return None
            rank = down.shape[0]
            scaling = _layer_scale(scales, layer) * alphas.get(layer, rank) / rank
            factors[layer] = (up, down, scaling)
        return factors

    @torch.no_grad()
    def _merge_subject_factors(self, factors: dict[str, tuple]) -> None:
        """W += (B @ A) x scaling in the weights' dtype, as peft's merge (in fp32 for half weights
        on a CPU, as peft)."""
        self._merged_subject_layers = []
        for layer, (up, down, scaling) in factors.items():
            weight = self.unet.get_submodule(layer).weight
            self._keep_original_weight(layer, weight)
            upcast = weight.device.type == "cpu" and weight.dtype in (torch.float16, torch.bfloat16)
            dtype = torch.float32 if upcast else weight.dtype
            up = up.to(weight.device, weight.dtype).to(dtype)
            down = down.to(weight.device, weight.dtype).to(dtype)
            weight.data += ((up @ down) * scaling).to(weight.dtype)
            self._merged_subject_layers.append(layer)

    def _subject_layers(self):
        for name, module in self.unet.named_modules():
            if isinstance(module, BaseTunerLayer) and SUBJECT_ADAPTER in getattr(module, "lora_A", {}):
                yield name, module

    def _fused_subject_layers(self):
        return [(name, module) for name, module in self._subject_layers() if SUBJECT_ADAPTER in module.merged_adapters]

    @torch.no_grad()
    def _fuse_subject_lora(self) -> None:
        for name, module in self._subject_layers():
            self._keep_original_weight(name, module.get_base_layer().weight)
            module.merge(adapter_names=[SUBJECT_ADAPTER])

    def _keep_original_weight(self, name: str, weight: torch.Tensor) -> None:
        """A copy of a layer's weight before its first merge (in pinned host memory beside a GPU),
        taken once per process: the base weights only ever change by these merges."""
        if not hasattr(self, "_unfused_weights"):
            self._unfused_weights: dict[str, torch.Tensor] = {}
        if name not in self._unfused_weights:
            pin = torch.cuda.is_available() and weight.device.type == "cuda"
            self._unfused_weights[name] = torch.empty(weight.shape, dtype=weight.dtype, pin_memory=pin).copy_(weight)

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
    ) -> IdentityConditioning:
        """Text embeddings, CLIP image embeds of the image prompt and the face embedding of one
        identity, each with its unconditional counterpart.

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
            raise ValueError(f"one identity per call: got {prompt_embeds.shape[0]} prompt embeddings, give one")
        identity = IdentityConditioning(prompt_embeds, negative_embeds, pooled, negative_pooled, notes=notes)
        roles = self.vcm.roles if self.vcm is not None else ()
        if self._image_prompt_active():
            embeds = self._image_prompt_embeds(ip_adapter_image, ip_adapter_image_embeds, do_classifier_free_guidance)
            if embeds is not None:
                identity.image_embeds, identity.negative_image_embeds = embeds
        if face_embedding is not None and "face" in roles:
            identity.face_position, identity.negative_face_position = self._face_positions(prompt, negative_prompt, notes)
            if identity.face_position is not None:
                face = torch.as_tensor(np.asarray(face_embedding), dtype=self.unet.dtype, device=device).reshape(1, 1, 1, -1)
                identity.face_embeds, identity.negative_face_embeds = face, torch.zeros_like(face)
        else:
            notes += self._face_notes(face_embedding)
        return identity

    def _image_prompt_embeds(self, image, embeds: list[torch.Tensor] | None, do_cfg: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """CLIP image embeds of the image prompt: (conditional, unconditional), (1, 1, D) each."""
        device, dtype = self._execution_device, self.unet.dtype
        if embeds is not None:
            if len(embeds) != 1:
                raise ValueError(f"the VCM has one image prompt: ip_adapter_image_embeds has {len(embeds)} tensors, give one")
            embeds = embeds[0].to(device, dtype)
            negative, positive = embeds.chunk(2) if do_cfg else (torch.zeros_like(embeds), embeds)
            return positive[:1].reshape(1, 1, -1), negative[:1].reshape(1, 1, -1)
        if image is None:
            return None
        if isinstance(image, (list, tuple)):
            if len(image) != 1:
                raise ValueError(f"the VCM has one image prompt: ip_adapter_image lists {len(image)} images, give one")
            image = image[0]
        if isinstance(image, PIL.Image.Image):
            # convert("RGB") drops alpha without compositing, as transformers' processor did.
            image = image.convert("RGB")
        pixels = self.feature_extractor(image, return_tensors="pt").pixel_values
        positive = self.image_encoder(pixels.to(device, self.image_encoder.dtype)).image_embeds[:, None]
        return positive, torch.zeros_like(positive)

    def _face_notes(self, face_embedding) -> list[str]:
        has_face = self.vcm is not None and "face" in self.vcm.roles
        if face_embedding is None and has_face:
            return ["no face embedding: generated without face tokens"]
        if face_embedding is not None and not has_face:
            return ["face_embedding given, but no InstantID adapter is loaded: generated without it"]
        return []

    def _face_positions(self, prompt: str | None, negative_prompt: str | None, notes: list[str]) -> tuple[int | None, int | None]:
        if self.profile.face_position == "fixed":
            # Published: position 4 in both halves, whatever the words are.
            return REFERENCE_FACE_POSITION, REFERENCE_FACE_POSITION
        if prompt is None:
            notes.append('the face embedding replaces the value of the prompt\'s "face" token: with prompt_embeds '
                         "and no prompt text there is none to find; generated without the face embedding")
            return None, None
        position = face_token_position(self.tokenizer, prompt)
        if position is None:
            message = f'caption has no word "face" ({prompt[:60]!r}): generated without the face embedding'
            logger.warning(message)
            notes.append(message)
            return None, None
        negative = face_token_position(self.tokenizer, negative_prompt) if negative_prompt is not None else None
        return position, negative

    def _image_prompt_active(self) -> bool:
        """The VCM has an image branch and some layer's scale is not 0 (else no image tokens)."""
        return self.vcm is not None and "image" in self.vcm.roles and any(p.ip_scale != 0 for p in self.vcm_processors.values())

    def _uses_vcm(self, ip_adapter_image, ip_adapter_image_embeds, face_embedding) -> bool:
        image = (ip_adapter_image is not None or ip_adapter_image_embeds is not None) and self._image_prompt_active()
        return image or (self.vcm is not None and "face" in self.vcm.roles and face_embedding is not None)

    # -- generation ---------------------------------------------------------------------------

    def check_inputs(
        self,
        prompt,
        prompt_2,
        image,
        callback_steps,
        negative_prompt=None,
        negative_prompt_2=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        pooled_prompt_embeds=None,
        ip_adapter_image=None,
        ip_adapter_image_embeds=None,
        negative_pooled_prompt_embeds=None,
        controlnet_conditioning_scale=1.0,
        control_guidance_start=0.0,
        control_guidance_end=1.0,
        callback_on_step_end_tensor_inputs=None,
        *,
        poses: list | None = None,
        generator=None,
        num_images_per_prompt: int = 1,
        transparent: bool = False,
        face_keypoints_image=None,
    ):
        """The parent's checks, and the method's: a pose at least, one prompt or one per pose, one
        generator per image, LayerDiffuse loaded for transparent decoding. Raises ValueError."""
        poses = _control_images(image) if poses is None else poses
        if not poses:
            raise ValueError("no target pose given")
        if transparent and self.transparent_decoder is None:
            raise ValueError("transparent decoding needs load_layerdiffuse() first")
        prompts = _prompt_count(prompt, prompt_embeds)
        if len(poses) > 1 and prompts not in (1, len(poses)):
            raise ValueError(f"{prompts} prompts for {len(poses)} poses: give one prompt, one per pose, or one pose")
        if len(poses) > 1 and isinstance(generator, list) and len(generator) != len(poses) * num_images_per_prompt:
            raise ValueError(f"{len(generator)} generators for {len(poses)} poses x {num_images_per_prompt} images per prompt")
        # One prompt for several poses is the method's form; the parent checks it as one pose.
        shown = image if len(poses) == 1 or prompts == len(poses) else [poses[0]]
        if face_keypoints_image is not None:
            # IdentityNet: the parent's form for two ControlNets, one condition each.
            shown = [_batch_of_one(poses[0]), face_keypoints_image]
        super().check_inputs(
            prompt, prompt_2, shown, callback_steps, negative_prompt, negative_prompt_2, prompt_embeds,
            negative_prompt_embeds, pooled_prompt_embeds, ip_adapter_image, ip_adapter_image_embeds,
            negative_pooled_prompt_embeds, controlnet_conditioning_scale, control_guidance_start,
            control_guidance_end, callback_on_step_end_tensor_inputs,
        )

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
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        face_embedding: np.ndarray | torch.Tensor | None = None,
        identity: IdentityConditioning | None = None,
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
                shared by every pose of a batch.
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
        callback = kwargs.pop("callback", None)
        callback_steps = kwargs.pop("callback_steps", None)
        for name, value in (("callback", callback), ("callback_steps", callback_steps)):
            if value is not None:
                deprecate(name, "1.0.0", f"Passing `{name}` as an input argument to `__call__` is deprecated, consider using `callback_on_step_end`")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        num_images_per_prompt = num_images_per_prompt or 1
        if negative_prompt is DEFAULT_NEGATIVE_PROMPT and negative_prompt_embeds is not None:
            negative_prompt = None  # the caller's embeddings replace the published default
        transparent = self.transparent_decoder is not None if transparent is None else transparent
        controlnet = self.controlnet._orig_mod if is_compiled_module(self.controlnet) else self.controlnet
        nets = len(controlnet.nets) if isinstance(controlnet, MultiControlNetModel) else 1
        identitynet = nets > 1 and face_keypoints_image is not None
        # Several ControlNets without the face keypoints: the parent's form, one condition per ControlNet.
        poses = [image] if nets > 1 and not identitynet else _control_images(image)
        if identitynet:
            controlnet_conditioning_scale = [controlnet_conditioning_scale, identitynet_conditioning_scale]

        # Align the format of the control guidance, as the parent does.
        if not isinstance(control_guidance_start, list) and isinstance(control_guidance_end, list):
            control_guidance_start = len(control_guidance_end) * [control_guidance_start]
        elif not isinstance(control_guidance_end, list) and isinstance(control_guidance_start, list):
            control_guidance_end = len(control_guidance_start) * [control_guidance_end]
        elif not isinstance(control_guidance_start, list) and not isinstance(control_guidance_end, list):
            control_guidance_start, control_guidance_end = nets * [control_guidance_start], nets * [control_guidance_end]

        # 1. Check inputs. Raise error if not correct (the parent's checks, and the method's)
        if identity is None and self._uses_vcm(ip_adapter_image, ip_adapter_image_embeds, face_embedding):
            identity = self.encode_identity(
                prompt, negative_prompt, ip_adapter_image, face_embedding, guidance_scale > 1.0,
                prompt_2=prompt_2, negative_prompt_2=negative_prompt_2,
                prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                ip_adapter_image_embeds=ip_adapter_image_embeds,
                clip_skip=clip_skip, lora_scale=(cross_attention_kwargs or {}).get("scale"),
            )
        if identity is not None:
            # The identity's text replaces the call's; its image prompt and face are the VCM's.
            prompt = prompt_2 = negative_prompt = negative_prompt_2 = None
            prompt_embeds, negative_prompt_embeds = identity.prompt_embeds, identity.negative_prompt_embeds
            pooled_prompt_embeds, negative_pooled_prompt_embeds = identity.pooled_prompt_embeds, identity.negative_pooled_prompt_embeds
        # The image prompt is the parent's IP-Adapter input only without the VCM.
        parents_image_prompt = self.vcm is None and (ip_adapter_image is not None or ip_adapter_image_embeds is not None)
        self.check_inputs(
            prompt, prompt_2, image, callback_steps, negative_prompt, negative_prompt_2, prompt_embeds,
            negative_prompt_embeds, pooled_prompt_embeds,
            ip_adapter_image if parents_image_prompt else None, ip_adapter_image_embeds if parents_image_prompt else None,
            negative_pooled_prompt_embeds, controlnet_conditioning_scale, control_guidance_start, control_guidance_end,
            callback_on_step_end_tensor_inputs, poses=poses, generator=generator, num_images_per_prompt=num_images_per_prompt,
            transparent=transparent, face_keypoints_image=face_keypoints_image if identitynet else None,
        )
        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._denoising_end = denoising_end
        self._interrupt = False
        notes = list(identity.notes) if identity is not None else self._face_notes(face_embedding)

        # 2. Define call parameters (follows StableDiffusionXLControlNetPipeline.__call__, step 2)
        device = self._execution_device
        if isinstance(controlnet, MultiControlNetModel) and isinstance(controlnet_conditioning_scale, float):
            controlnet_conditioning_scale = [controlnet_conditioning_scale] * nets
        global_pool_conditions = (
            controlnet.config.global_pool_conditions
            if isinstance(controlnet, ControlNetModel)
            else controlnet.nets[0].config.global_pool_conditions
        )
        guess_mode = guess_mode or global_pool_conditions
        per_pose = num_images_per_prompt

        # 3. Encode input prompt, once for every pose (the parent encodes it per image; the identity's is encoded already)
        all_prompt_embeds, all_negative_prompt_embeds, all_pooled_prompt_embeds, all_negative_pooled_prompt_embeds = self.encode_prompt(
            prompt,
            prompt_2,
            device,
            1,
            self.do_classifier_free_guidance,
            negative_prompt,
            negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=self.cross_attention_kwargs.get("scale", None) if self.cross_attention_kwargs is not None else None,
            clip_skip=self.clip_skip,
        )
        prompts = all_prompt_embeds.shape[0]

        # Batches of target poses: steps 4 to 9 run once per batch.
        given_image, given_latents = image, latents
        step = batch_size or len(poses)
        results = []
        for first in range(0, len(poses), step):
            chunk = poses[first : first + step]
            whole = len(chunk) == len(poses)  # one batch: the caller's arguments go through as given
            # Its prompts: all of them with one pose (the parent's form), one per pose, or the shared one repeated.
            rows_of = list(range(prompts)) if len(poses) == 1 else [first + n if prompts > 1 else 0 for n in range(len(chunk))]
            rows = len(rows_of) * per_pose
            images_of = slice(first * per_pose, first * per_pose + rows)

            # 4. Prepare image (follows StableDiffusionXLControlNetPipeline.__call__, step 4)
            control_image = given_image if whole else chunk
            if identitynet:
                control_image = [control_image, face_keypoints_image.resize(_image_size(chunk[0]))]
            if isinstance(controlnet, ControlNetModel):
                image = self.prepare_image(
                    image=control_image, width=width, height=height, batch_size=rows, num_images_per_prompt=per_pose,
                    device=device, dtype=controlnet.dtype, do_classifier_free_guidance=self.do_classifier_free_guidance,
                    guess_mode=guess_mode,
                )
                image_height, image_width = image.shape[-2:]
            else:
                image = [
                    self.prepare_image(
                        image=condition, width=width, height=height, batch_size=rows, num_images_per_prompt=per_pose,
                        device=device, dtype=controlnet.dtype, do_classifier_free_guidance=self.do_classifier_free_guidance,
                        guess_mode=guess_mode,
                    )
                    for condition in control_image
                ]
                image_height, image_width = image[0].shape[-2:]

            # 5. Prepare timesteps (follows StableDiffusionXLControlNetPipeline.__call__, step 5)
            batch_timesteps, batch_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
            self._num_timesteps = len(batch_timesteps)

            # 6. Prepare latent variables (follows StableDiffusionXLControlNetPipeline.__call__, step 6; this batch's generators and latents)
            latents = self.prepare_latents(
                rows,
                self.unet.config.in_channels,
                image_height,
                image_width,
                all_prompt_embeds.dtype,
                device,
                generator if whole or not isinstance(generator, list) else generator[images_of],
                given_latents if whole or given_latents is None else given_latents[images_of],
            )

            # 6.5 Optionally get Guidance Scale Embedding (follows StableDiffusionXLControlNetPipeline.__call__, step 6.5)
            timestep_cond = None
            if self.unet.config.time_cond_proj_dim is not None:
                guidance_scale_tensor = torch.tensor(self.guidance_scale - 1).repeat(rows)
                timestep_cond = self.get_guidance_scale_embedding(
                    guidance_scale_tensor, embedding_dim=self.unet.config.time_cond_proj_dim
                ).to(device=device, dtype=latents.dtype)

            # 7. Prepare extra step kwargs (follows StableDiffusionXLControlNetPipeline.__call__, step 7)
            extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

            # 7.1 Create tensor stating which controlnets to keep (follows StableDiffusionXLControlNetPipeline.__call__, step 7.1)
            controlnet_keep = []
            for i in range(len(batch_timesteps)):
                keeps = [
                    1.0 - float(i / len(batch_timesteps) < s or (i + 1) / len(batch_timesteps) > e)
                    for s, e in zip(control_guidance_start, control_guidance_end)
                ]
                controlnet_keep.append(keeps[0] if isinstance(controlnet, ControlNetModel) else keeps)

            # 7.2 Prepare added time ids & embeddings (follows StableDiffusionXLControlNetPipeline.__call__, step 7.2, on this batch's prompt rows)
            batch_original_size = original_size or (image[0] if isinstance(image, list) else image).shape[-2:]
            batch_target_size = target_size or (image_height, image_width)
            if self.text_encoder_2 is None:
                text_encoder_projection_dim = int(all_pooled_prompt_embeds.shape[-1])
            else:
                text_encoder_projection_dim = self.text_encoder_2.config.projection_dim
            add_time_ids = self._get_add_time_ids(
                batch_original_size, crops_coords_top_left, batch_target_size,
                dtype=all_prompt_embeds.dtype, text_encoder_projection_dim=text_encoder_projection_dim,
            )
            if negative_original_size is not None and negative_target_size is not None:
                negative_add_time_ids = self._get_add_time_ids(
                    negative_original_size, negative_crops_coords_top_left, negative_target_size,
                    dtype=all_prompt_embeds.dtype, text_encoder_projection_dim=text_encoder_projection_dim,
                )
            else:
                negative_add_time_ids = add_time_ids
            prompt_embeds = all_prompt_embeds[rows_of].repeat_interleave(per_pose, dim=0)
            add_text_embeds = all_pooled_prompt_embeds[rows_of].repeat_interleave(per_pose, dim=0)
            if self.do_classifier_free_guidance:
                negative_prompt_embeds = all_negative_prompt_embeds[rows_of].repeat_interleave(per_pose, dim=0)
                negative_pooled_prompt_embeds = all_negative_pooled_prompt_embeds[rows_of].repeat_interleave(per_pose, dim=0)
                prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)
                add_text_embeds = torch.cat([negative_pooled_prompt_embeds, add_text_embeds], dim=0)
                add_time_ids = torch.cat([negative_add_time_ids, add_time_ids], dim=0)
            prompt_embeds = prompt_embeds.to(device)
            add_text_embeds = add_text_embeds.to(device)
            add_time_ids = add_time_ids.to(device).repeat(rows, 1)

            # 7.3 The image prompt and the face: the VCM's (image embeds per role, the face's text
            # position), or the parent's IP-Adapter input without the VCM
            attention_kwargs = self.cross_attention_kwargs
            image_embeds = None
            if self.vcm is not None:
                roles = self.vcm.roles
                cfg = self.do_classifier_free_guidance
                image_embeds = identity.image_embeds_for(roles, rows, cfg) if identity is not None else [None] * len(roles)
                if identity is not None and identity.has_face:
                    attention_kwargs = {**(attention_kwargs or {}), "face_positions": identity.face_positions_for(rows, cfg, device)}
            elif parents_image_prompt:
                image_embeds = self.prepare_ip_adapter_image_embeds(
                    ip_adapter_image, ip_adapter_image_embeds, device, rows, self.do_classifier_free_guidance
                )

            # 8. Denoising loop (follows StableDiffusionXLControlNetPipeline.__call__, step 8; the UNet also receives the VCM's embeds and face positions)
            num_warmup_steps = len(batch_timesteps) - batch_inference_steps * self.scheduler.order

            # 8.1 Apply denoising_end (follows StableDiffusionXLControlNetPipeline.__call__, step 8.1)
            if self.denoising_end is not None and isinstance(self.denoising_end, float) and 0 < self.denoising_end < 1:
                discrete_timestep_cutoff = int(
                    round(
                        self.scheduler.config.num_train_timesteps
                        - (self.denoising_end * self.scheduler.config.num_train_timesteps)
                    )
                )
                batch_inference_steps = len(list(filter(lambda ts: ts >= discrete_timestep_cutoff, batch_timesteps)))
                batch_timesteps = batch_timesteps[:batch_inference_steps]

            is_unet_compiled = is_compiled_module(self.unet)
            is_controlnet_compiled = is_compiled_module(self.controlnet)
            is_torch_higher_equal_2_1 = is_torch_version(">=", "2.1")
            with self.progress_bar(total=batch_inference_steps) as progress_bar:
                for i, t in enumerate(batch_timesteps):
                    if self.interrupt:
                        continue
                    if torch.cuda.is_available() and (is_unet_compiled and is_controlnet_compiled) and is_torch_higher_equal_2_1:
                        torch._inductor.cudagraph_mark_step_begin()
                    # expand the latents if we are doing classifier free guidance
                    latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                    latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                    added_cond_kwargs = {"text_embeds": add_text_embeds, "time_ids": add_time_ids}

                    # controlnet(s) inference; the ControlNet reads the text alone
                    if guess_mode and self.do_classifier_free_guidance:
                        # Infer ControlNet only for the conditional batch.
                        control_model_input = self.scheduler.scale_model_input(latents, t)
                        controlnet_prompt_embeds = prompt_embeds.chunk(2)[1]
                        controlnet_added_cond_kwargs = {
                            "text_embeds": add_text_embeds.chunk(2)[1],
                            "time_ids": add_time_ids.chunk(2)[1],
                        }
                    else:
                        control_model_input = latent_model_input
                        controlnet_prompt_embeds = prompt_embeds
                        controlnet_added_cond_kwargs = added_cond_kwargs
                    if isinstance(controlnet_keep[i], list):
                        cond_scale = [c * s for c, s in zip(controlnet_conditioning_scale, controlnet_keep[i])]
                    else:
                        controlnet_cond_scale = controlnet_conditioning_scale
                        if isinstance(controlnet_cond_scale, list):
                            controlnet_cond_scale = controlnet_cond_scale[0]
                        cond_scale = controlnet_cond_scale * controlnet_keep[i]
                    down_block_res_samples, mid_block_res_sample = self.controlnet(
                        control_model_input,
                        t,
                        encoder_hidden_states=controlnet_prompt_embeds,
                        controlnet_cond=image,
                        conditioning_scale=cond_scale,
                        guess_mode=guess_mode,
                        added_cond_kwargs=controlnet_added_cond_kwargs,
                        return_dict=False,
                    )
                    if guess_mode and self.do_classifier_free_guidance:
                        # Add 0 to the unconditional batch to keep it unchanged.
                        down_block_res_samples = [torch.cat([torch.zeros_like(d), d]) for d in down_block_res_samples]
                        mid_block_res_sample = torch.cat([torch.zeros_like(mid_block_res_sample), mid_block_res_sample])
                    if image_embeds is not None:
                        added_cond_kwargs["image_embeds"] = image_embeds

                    # predict the noise residual
                    noise_pred = self.unet(
                        latent_model_input,
                        t,
                        encoder_hidden_states=prompt_embeds,
                        timestep_cond=timestep_cond,
                        cross_attention_kwargs=attention_kwargs,
                        down_block_additional_residuals=down_block_res_samples,
                        mid_block_additional_residual=mid_block_res_sample,
                        added_cond_kwargs=added_cond_kwargs,
                        return_dict=False,
                    )[0]

                    # perform guidance
                    if self.do_classifier_free_guidance:
                        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                        noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)

                    # compute the previous noisy sample x_t -> x_t-1
                    latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                    if callback_on_step_end is not None:
                        callback_kwargs = {}
                        for k in callback_on_step_end_tensor_inputs:  # the parent's names (a comprehension has its own locals)
                            callback_kwargs[k] = locals()[k]
                        callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                        latents = callback_outputs.pop("latents", latents)
                        prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                        negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                        add_text_embeds = callback_outputs.pop("add_text_embeds", add_text_embeds)
                        negative_pooled_prompt_embeds = callback_outputs.pop("negative_pooled_prompt_embeds", negative_pooled_prompt_embeds)
                        add_time_ids = callback_outputs.pop("add_time_ids", add_time_ids)
                        negative_add_time_ids = callback_outputs.pop("negative_add_time_ids", negative_add_time_ids)
                        image = callback_outputs.pop("image", image)

                    if i == len(batch_timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                        progress_bar.update()
                        if callback is not None and i % callback_steps == 0:
                            callback(i // getattr(self.scheduler, "order", 1), t, latents)

            # 9. Decode: RGBA through LayerDiffuse, or the parent's RGB
            if output_type == "latent":
                results.append(latents)
            elif transparent:
                results.append(self._decode_transparent(latents, output_type))
            else:
                results.append(self._decode(latents, output_type))

        self.maybe_free_model_hooks()
        images = _concatenate(results)
        if not return_dict:
            return (images, notes)
        return OnePoseTransPipelineOutput(images=images, notes=notes)

    def _decode(self, latents: torch.Tensor, output_type: str):
        """The parent's decoding: the VAE in its decoding precision (:meth:`_vae_decoding`), its
        latents mean and std when the config has them, the watermark."""
        config = self.vae.config
        with self._vae_decoding(self.vae) as (upcast, dtype):
            if upcast:
                latents = latents.to(dtype)
            if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
                latents_mean = torch.tensor(config.latents_mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
                latents_std = torch.tensor(config.latents_std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
                latents = latents * latents_std / config.scaling_factor + latents_mean
            else:
                latents = latents / config.scaling_factor
            image = self.vae.decode(latents, return_dict=False)[0]
        if self.watermark is not None:
            image = self.watermark.apply_watermark(image)
        return self.image_processor.postprocess(image, output_type=output_type)

    @contextlib.contextmanager
    def _vae_decoding(self, vae: AutoencoderKL):
        """Holds ``vae`` in its decoding precision; yields whether it was upcast and the dtype its
        ``post_quant_conv`` reads.

        An fp16 VAE that asks for upcasting (SDXL's overflows in fp16) decodes in fp32 and is
        restored afterwards. The reference profile upcasts as diffusers 0.28's ``upcast_vae`` did
        under PyTorch 2 attention: ``post_quant_conv``, ``decoder.conv_in`` and
        ``decoder.mid_block`` stay in fp16 and the decoder casts to fp32 before its up blocks
        (0.28's ``Decoder.forward`` did that cast; 0.42's does not, so a hook does it here).
        """
        if not (vae.dtype == torch.float16 and vae.config.force_upcast):
            yield False, next(iter(vae.post_quant_conv.parameters())).dtype
            return
        vae.to(dtype=torch.float32)
        hook = None
        if self.profile.vae_upcast == "diffusers 0.28":
            for part in (vae.post_quant_conv, vae.decoder.conv_in, vae.decoder.mid_block):
                part.to(dtype=torch.float16)
            hook = vae.decoder.up_blocks[0].register_forward_pre_hook(
                lambda module, args: (args[0].to(torch.float32), *args[1:])
            )
        try:
            yield True, next(iter(vae.post_quant_conv.parameters())).dtype
        finally:
            if hook is not None:
                hook.remove()
            vae.to(dtype=torch.float16)

    def decode_transparent_latents(
        self, latents: torch.Tensor, main_stage: bool = True, vae: AutoencoderKL | None = None
    ) -> list[PIL.Image.Image]:
        """RGBA images from sampled (scaled) latents; see :meth:`_decode_transparent`."""
        return self._decode_transparent(latents, "pil", main_stage, vae)

    def _decode_transparent(
        self, latents: torch.Tensor, output_type: str, main_stage: bool = True, vae: AutoencoderKL | None = None
    ):
        """RGB through the SDXL VAE, then alpha and foreground through the transparent decoder.

        Default profile: the decoder reads the unscaled latent, as LayerDiffuse does, and the
        8-bit output is rounded. Reference: the published main stage passed the latent still
        multiplied by the scaling factor and gave the decoder the pipeline's 8-bit RGB (rounded);
        its refining stage (``main_stage=False``) did neither. Both truncated the output to 8 bits
        (numpy's ``astype(uint8)``). ``vae``: another VAE than the pipeline's (the refining
        stage's bf16 copy in the reference profile).
        """
        vae = self.vae if vae is None else vae
        unscaled = latents / vae.config.scaling_factor
        with self._vae_decoding(vae) as (_, dtype):
            pixel = vae.decode(unscaled.to(dtype), return_dict=False)[0]
        pixel = (pixel * 0.5 + 0.5).clip(0, 1)
        truncate = self.profile.transparent_rounding == "truncate"
        if truncate and main_stage:
            pixel = (pixel.float() * 255.0).round() / 255.0
        decoder_latent = latents if self.profile.decoder_latent == "scaled" and main_stage else unscaled
        rgba = layerdiffuse.decode_transparent(
            self.transparent_decoder, pixel, decoder_latent, batched=self.profile.batch_transparent_views
        )
        if output_type == "pt":
            return rgba.float()
        array = layerdiffuse.rgba_to_uint8(rgba, truncate)
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
            raise ValueError(f"one identity per call: {name} lists {len(value)} texts, give one")
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


def _batch_of_one(image):
    """One pose as a batch of one in its own form: a PIL image, an NHWC array or an NCHW tensor."""
    return image if isinstance(image, PIL.Image.Image) else image[None]


def _image_size(image) -> tuple[int, int]:
    """(width, height) of a PIL image, an HWC array or a CHW tensor."""
    if isinstance(image, PIL.Image.Image):
        return image.size
    if isinstance(image, np.ndarray):
        return image.shape[1], image.shape[0]
    return image.shape[-1], image.shape[-2]


def _prompt_count(prompt, prompt_embeds) -> int:
    """How many prompts the call's text arguments hold (the parent's batch size)."""
    if isinstance(prompt, (list, tuple)):
        return len(prompt)
    if prompt is None and prompt_embeds is not None:
        return prompt_embeds.shape[0]
    return 1


def _layer_scale(scales: dict | float, layer: str) -> float:
    """The block scale of one UNet layer, as diffusers' ``set_weights_and_activate_adapters``
    picks it from the expanded ``{"down_blocks.1.attentions.0": scale, ...}``."""
    if not isinstance(scales, dict):
        return scales
    for name, scale in scales.items():
        if name in layer:
            return scale
    parts = layer.split(".")
    return scales.get(f"{parts[0]}.{parts[1]}.attentions.{parts[3]}", 1.0)
