"""The Visual Consistency Module (OnePoseTrans, arXiv 2409.09593; the published pipeline_stable_diffusion_xl_oneposetrans.py).

Three signals condition every cross-attention layer of the SDXL UNet:

* the caption's 77 text tokens;
* an IP-Adapter image prompt: CLIP ViT-H ``image_embeds`` projected to 4 tokens, attended in a
  separate branch added with a per-block scale ("style injection": 1.0 at
  ``up_blocks.0.attentions.1``, 0.4 at ``up_blocks.0.attentions.0``, 0 elsewhere);
* an InstantID face embedding: ArcFace 512-d through a Perceiver Resampler to 16 tokens, pooled
  into one vector that replaces the *value* of the caption's "face" token in every layer.

They travel the way diffusers' own IP-Adapter carries image prompts: the embeddings in
``added_cond_kwargs["image_embeds"]`` (one entry per role, image then face), projected by the
UNet's ``encoder_hid_proj`` (:class:`VCMImageProjection`), and every cross-attention processor
(:class:`VCMAttnProcessor`) receives ``(text states, [image tokens, face tokens])``. The text
position whose value takes the face travels in ``cross_attention_kwargs["face_positions"]``.

The weights are one pipeline component, :class:`VisualConsistencyModule`, read from the
published files with their own key names (:meth:`VisualConsistencyModule.from_published`): the
IP-Adapter file (``image_proj`` + ``ip_adapter``) and InstantID's ``ip-adapter.bin`` (the same
layout, whose K/V become the ``to_face_*`` projections).
"""

from __future__ import annotations

import os
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection, MultiIPAdapterImageProjection
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import load_file
from torch import nn

from oneposetrans.settings import published_ip_scales

TEXT_TOKENS = 77
IMAGE_TOKENS = 4
FACE_TOKENS = 16
# Reference: the published ControlNet processor strips 4 + 16 adapter tokens from the 77 it is
# given, so the ControlNet reads text tokens 0..56 only.
REFERENCE_CONTROLNET_TEXT_TOKENS = TEXT_TOKENS - IMAGE_TOKENS - FACE_TOKENS
REFERENCE_FACE_POSITION = 4
FACE_BOOST = 4.0
ROLES = ("image", "face")
"""The order of the VCM's entries in ``added_cond_kwargs["image_embeds"]``."""


# ---------------------------------------------------------------------------------------------
# The weights: one pipeline component


class VCMLayer(nn.Module):
    """One cross-attention layer's adapter projections: image K/V (IP-Adapter), face K/V (InstantID)."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, image: bool, face: bool):
        super().__init__()
        if image:
            self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
            self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        if face:
            self.to_face_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
            self.to_face_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)


class VisualConsistencyModule(ModelMixin, ConfigMixin):
    """The VCM's weights: the image projection (``ImageProjection``), the face projection
    (InstantID's Resampler in the ``IPAdapterPlusImageProjection`` layout) and, for every
    cross-attention layer, its adapter projections under the published layer index (the
    processor's index among all UNet processors: 1, 3, ... 139 in SDXL).

    A registered pipeline component, so ``to``, offloading and ``save_pretrained``/
    ``from_pretrained`` are diffusers'. The branch scales are part of its config."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        layer_widths: dict[str, int],
        cross_attention_dim: int,
        image_projection_config: dict | None = None,
        face_projection_config: dict | None = None,
        ip_scales: dict[str, float] | None = None,
        face_scale: float = 0.0,
    ):
        super().__init__()
        self.image_projection = ImageProjection(**image_projection_config) if image_projection_config else None
        self.face_projection = IPAdapterPlusImageProjection(**face_projection_config) if face_projection_config else None
        self.layers = nn.ModuleDict(
            {
                index: VCMLayer(width, cross_attention_dim, image_projection_config is not None, face_projection_config is not None)
                for index, width in layer_widths.items()
            }
        )

    @property
    def roles(self) -> tuple[str, ...]:
        """The branches this module has, in ``added_cond_kwargs["image_embeds"]`` order."""
        return tuple(role for role in ROLES if getattr(self, f"{role}_projection") is not None)

    @classmethod
    def from_published(
        cls, unet, ip_adapter: str | os.PathLike | None, face_adapter: str | os.PathLike | None
    ) -> "VisualConsistencyModule":
        """The module for ``unet`` from the published adapter files (either may be None), at the
        published image-prompt scales."""
        image_state = load_adapter_checkpoint(ip_adapter) if ip_adapter else None
        face_state = load_adapter_checkpoint(face_adapter) if face_adapter else None
        return cls.from_adapter_states(unet, image_state, face_state)

    @classmethod
    def from_adapter_states(cls, unet, image_state: dict | None, face_state: dict | None) -> "VisualConsistencyModule":
        """The module for ``unet`` from the adapters' weights as the published files hold them
        (``{"image_proj": ..., "ip_adapter": ...}`` each, or None), at the published scales."""
        indices = cross_attention_processor_indices(unet)
        widths = {str(index): unet.get_submodule(name.removesuffix(".processor")).to_q.out_features for name, index in indices.items()}
        image = face = None
        if image_state is not None:
            image = unet._convert_ip_adapter_image_proj_to_diffusers(image_state["image_proj"], low_cpu_mem_usage=False)
        if face_state is not None:
            face = unet._convert_ip_adapter_image_proj_to_diffusers(face_state["image_proj"], low_cpu_mem_usage=False)
        state: dict[str, torch.Tensor] = {}
        if image is not None:
            state |= {f"image_projection.{k}": v for k, v in image.state_dict().items()}
        if face is not None:
            state |= {f"face_projection.{k}": v for k, v in face.state_dict().items()}
        expected = set(widths)
        for adapter, prefix, what in ((image_state, "", "IP-Adapter"), (face_state, "face_", "InstantID")):
            if adapter is None:
                continue
            layers = set()
            for key, tensor in adapter["ip_adapter"].items():
                match = _ADAPTER_KEY.match(key)
                if match is None:
                    raise ValueError(f"unexpected adapter weight {key!r}")
                layers.add(match.group(1))
                state[f"layers.{match.group(1)}.{match.group(2).replace('to_', f'to_{prefix}', 1)}.weight"] = tensor
            if layers != expected:
                raise ValueError(f"{what} weights cover {len(layers)} cross-attention layers, this UNet has {len(expected)}")
        with torch.device("meta"):
            module = cls(
                layer_widths=widths,
                cross_attention_dim=unet.config.cross_attention_dim,
                image_projection_config=_image_projection_config(image) if image is not None else None,
                face_projection_config=_face_projection_config(face) if face is not None else None,
                ip_scales=published_ip_scales(),
            )
        module.load_state_dict(state, strict=True, assign=True)
        return module.to(unet.device, unet.dtype).eval()


def _image_projection_config(projection: ImageProjection) -> dict:
    return {
        "image_embed_dim": projection.image_embeds.in_features,
        "cross_attention_dim": projection.norm.normalized_shape[0],
        "num_image_text_embeds": projection.num_image_text_embeds,
    }


def _face_projection_config(projection: IPAdapterPlusImageProjection) -> dict:
    first = projection.layers[0]
    return {
        "embed_dims": projection.proj_in.in_features,
        "output_dims": projection.proj_out.out_features,
        "hidden_dims": projection.proj_in.out_features,
        "depth": len(projection.layers),
        "dim_head": first.attn.to_q.out_features // first.attn.heads,
        "heads": first.attn.heads,
        "num_queries": projection.latents.shape[1],
        "ffn_ratio": first.ff[1].net[0].proj.out_features // projection.proj_in.out_features,
    }


def load_adapter_checkpoint(path: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": ..., "ip_adapter": ...}`` from a published ``.bin`` (nested dicts) or
    ``.safetensors`` (flat, ``image_proj.``/``ip_adapter.`` prefixes) IP-Adapter file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, tensor in load_file(path).items():
            group, _, rest = key.partition(".")
            if group in nested:
                nested[group][rest] = tensor
        state = nested
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not state.get("image_proj") or not state.get("ip_adapter"):
        raise ValueError(f"{path}: not an IP-Adapter checkpoint (needs image_proj and ip_adapter weights)")
    return state


def cross_attention_processor_indices(unet) -> dict[str, int]:
    """Processor name -> its index among all UNet processors, the numbering of the published
    ``ip_adapter`` keys (``1.to_k_ip.weight`` is the first cross-attention)."""
    return {name: index for index, name in enumerate(unet.attn_processors) if name.endswith("attn2.processor")}


_ADAPTER_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")


# ---------------------------------------------------------------------------------------------
# Kept per identity


def _version_of(tensor: torch.Tensor) -> int:
    """The in-place version counter; inference tensors have none (and cannot change outside
    inference mode)."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


class KeptPerTensors:
    """Values computed from some tensors, kept while exactly those tensors are alive and unchanged.

    Within one sampling call every step hands the UNet the same prompt and image-embedding
    tensors, so what is computed from them alone (the identity's tokens, keys and values) is
    computed at the first step and reused. An entry goes when one of its tensors is freed, so
    nothing outlives the call that made it; at most ``size`` entries are kept (samplers that run
    the conditional and unconditional halves in separate calls pass two sets of tensors).
    """

    def __init__(self, size: int = 2):
        self.size = size
        self.entries: list[tuple[tuple, tuple, object, object]] = []

    def get(self, tensors: tuple, extra: object = None):
        versions = tuple(None if t is None else _version_of(t) for t in tensors)
        for refs, kept_versions, kept_extra, value in self.entries:
            if kept_extra == extra and kept_versions == versions and all(
                (ref is None and tensor is None) or (ref is not None and ref() is tensor) for ref, tensor in zip(refs, tensors)
            ):
                return value
        return None

    def put(self, tensors: tuple, value, extra: object = None) -> None:
        refs = tuple(None if t is None else weakref.ref(t, self._drop_freed) for t in tensors)
        versions = tuple(None if t is None else _version_of(t) for t in tensors)
        self.entries = [*self.entries[-(self.size - 1) :], (refs, versions, extra, value)]

    def _drop_freed(self, _freed) -> None:
        self.entries = [entry for entry in self.entries if all(ref is None or ref() is not None for ref in entry[0])]


# ---------------------------------------------------------------------------------------------
# In the UNet


class VCMImageProjection(MultiIPAdapterImageProjection):
    """The UNet's ``encoder_hid_proj`` with the VCM: diffusers' projection of image embeddings
    into tokens, one layer per role (image, face).

    An entry may be None, or the list shorter than the roles (the refining pass gives the image
    prompt only): that role has no tokens. Each distinct embedding row is projected once, alone,
    and the tokens are kept while the same embeddings come back (every step of a call): the
    rows of a batch are copies of one identity's two rows (conditional, unconditional), and a
    row projected alone gives the same bits whichever batch it came in.
    """

    def __init__(self, vcm: VisualConsistencyModule, together: tuple[str, ...] = ()):
        """``together``: roles whose distinct rows are projected in one batch, in the order they
        first appear (the reference profile's face: the published [zeros, face] call)."""
        super().__init__([getattr(vcm, f"{role}_projection") for role in vcm.roles])
        self.roles = vcm.roles
        self.together = together
        self._kept = KeptPerTensors()

    def forward(self, image_embeds: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        embeds = tuple(image_embeds) + (None,) * (len(self.roles) - len(image_embeds))
        if len(embeds) != len(self.roles):
            raise ValueError(f"image_embeds has {len(embeds)} entries; the VCM has {len(self.roles)}: {', '.join(self.roles)}")
        keep = not torch.is_grad_enabled()
        if keep:
            kept = self._kept.get(embeds)
            if kept is not None:
                return kept
        tokens = [
            None if e is None else _project_rows(layer, e, role in self.together)
            for e, layer, role in zip(embeds, self.image_projection_layers, self.roles)
        ]
        if keep:
            self._kept.put(embeds, tokens)
        return tokens


def _project_rows(layer: nn.Module, embeds: torch.Tensor, together: bool = False) -> torch.Tensor:
    """``embeds`` (batch, images, ...) -> (batch, images, tokens, width): each distinct row alone,
    or (``together``) the distinct rows as one batch in the order they first appear."""
    batch, images = embeds.shape[:2]
    rows = embeds.reshape(batch * images, *embeds.shape[2:])
    firsts, inverse = [], []
    for row in rows:
        index = next((i for i, seen in enumerate(firsts) if torch.equal(seen, row)), None)
        if index is None:
            firsts.append(row)
            index = len(firsts) - 1
        inverse.append(index)
    distinct = torch.stack(firsts)
    if together:
        tokens = layer(distinct)
    else:
        tokens = torch.cat([layer(row.view(1, *rows.shape[1:])) for row in distinct])
    return tokens[torch.tensor(inverse, device=tokens.device)].view(batch, images, *tokens.shape[1:])


def pooled_face_value(face_value: torch.Tensor) -> torch.Tensor:
    """4 * sum_i softmax_i(Vf) * Vf_i over the face tokens, per channel: one (B, 1, C) vector.

    The published code writes it as mean(softmax * V) * 16 * 4, the same quantity.
    """
    weights = torch.softmax(face_value, dim=1)
    return FACE_BOOST * (weights * face_value).sum(dim=1, keepdim=True)


def _replace_face_value(value: torch.Tensor, face_value: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    if positions is None:
        return value
    rows = torch.nonzero(positions >= 0).flatten()
    if rows.numel() == 0:
        return value
    pooled = pooled_face_value(face_value)[rows, 0].to(value.dtype)
    return value.index_put((rows, positions[rows].to(value.device)), pooled)


class VCMAttnProcessor(nn.Module):
    """Cross-attention with the VCM: face-value replacement and the scaled image branch.

    ``encoder_hidden_states`` is ``(text, [tokens per role])`` as diffusers' IP-Adapter
    processors receive it; ``face_positions`` (per batch row, the text position whose value takes
    the face vector; -1 leaves a row alone) comes in ``cross_attention_kwargs``. Branches whose
    scale is 0 are not computed, and no attention maps are kept: the published processor
    computed a scale-0 face branch and three debugging maps in all 70 layers.

    The identity's keys and values (text with the face value in place, image prompt, face) are
    the same at every step of a call: they are computed at the first and kept while the same
    tensors come back (:class:`KeptPerTensors`), bit-identical to recomputing them.
    """

    def __init__(self, layer: VCMLayer, roles: tuple[str, ...], face_key_from_value: bool = False):
        super().__init__()
        self.layer = layer
        self.roles = roles
        self.face_key_from_value = face_key_from_value
        """Reference quirk: the face key used the value projection (only matters if face_scale > 0)."""
        self.ip_scale = 0.0
        self.face_scale = 0.0
        self.slice_size: int | None = None
        """Attention computed this many (batch x head) rows at a time, as diffusers'
        ``SlicedAttnProcessor`` does under ``enable_attention_slicing``; None: all at once."""
        self._kept = KeptPerTensors()

    def _heads(self, attn, tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
        return tensor.view(batch_size, -1, attn.heads, tensor.shape[-1] // attn.heads).transpose(1, 2)

    def _role(self, tokens: list, role: str) -> torch.Tensor | None:
        """This role's tokens (batch, images, tokens, width) as the projection gave them, or None."""
        if role not in self.roles or self.roles.index(role) >= len(tokens):
            return None
        return tokens[self.roles.index(role)]

    def _identity_keys_values(self, attn, text, image, face, positions, batch_size: int) -> tuple:
        """Text key, text value with the face vector in place, image-prompt key and value, and
        the face key and value, in heads layout."""
        image = None if image is None else image.flatten(1, 2)
        face = None if face is None else face.flatten(1, 2)
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        key = attn.to_k(text)
        value = attn.to_v(text)
        face_value = None
        if face is not None:
            face_value = self.layer.to_face_v_ip(face)
            value = _replace_face_value(value, face_value, positions)
        key, value = self._heads(attn, key, batch_size), self._heads(attn, value, batch_size)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        ip_key = ip_value = face_key = None
        if image is not None and self.ip_scale != 0:
            ip_key = self._heads(attn, self.layer.to_k_ip(image), batch_size)
            ip_value = self._heads(attn, self.layer.to_v_ip(image), batch_size)
        if face is not None and self.face_scale != 0:
            projection = self.layer.to_face_v_ip if self.face_key_from_value else self.layer.to_face_k_ip
            face_key = self._heads(attn, projection(face), batch_size)
            face_value = self._heads(attn, face_value, batch_size)
        else:
            face_value = None
        return key, value, ip_key, ip_value, face_key, face_value

    # Eager inside a compiled UNet block: what it keeps per identity, its scales and the identity's
    # tensors are Python state that a compiled graph would guard on, so a new identity would
    # recompile it. Outside compilation the wrapper costs a few microseconds a call.
    @torch.compiler.disable
    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, face_positions=None, **kwargs
    ):
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size = hidden_states.shape[0]
        if attention_mask is not None:
            raise ValueError("the VCM processor does not take an attention mask")
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = self._heads(attn, attn.to_q(hidden_states), batch_size)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        text, tokens = encoder_hidden_states if isinstance(encoder_hidden_states, tuple) else (encoder_hidden_states, [])
        image, face = self._role(tokens, "image"), self._role(tokens, "face")
        inputs = (text, image, face, face_positions)
        keep = not torch.is_grad_enabled()  # a kept tensor must not carry an autograd graph across calls
        scales = (self.ip_scale, self.face_scale)
        kept = self._kept.get(inputs, scales) if keep else None
        if kept is None:
            kept = self._identity_keys_values(attn, text, image, face, face_positions, batch_size)
            if keep:
                self._kept.put(inputs, kept, scales)
        key, value, ip_key, ip_value, face_key, face_value = kept
        hidden_states = self._attend(query, key, value)
        if ip_key is not None:
            hidden_states = hidden_states + self.ip_scale * self._attend(query, ip_key, ip_value)
        if face_key is not None:
            hidden_states = hidden_states + self.face_scale * self._attend(query, face_key, face_value)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * hidden_states.shape[-1])
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        if self.slice_size is None:
            return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        rows = query.shape[:2]
        query, key, value = query.flatten(0, 1), key.flatten(0, 1), value.flatten(0, 1)
        step = self.slice_size
        slices = [
            F.scaled_dot_product_attention(query[i : i + step], key[i : i + step], value[i : i + step])
            for i in range(0, query.shape[0], step)
        ]
        return torch.cat(slices).unflatten(0, rows)


class IgnoresFacePositions:
    """Any attention processor, taking the VCM's ``face_positions`` and leaving it unused:
    diffusers hands every ``cross_attention_kwargs`` entry to every attention layer of the UNet,
    self-attention included, and warns where a processor does not name it."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, face_positions=None, **kwargs):
        if temb is not None:
            kwargs["temb"] = temb
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs)


class TextWindowAttnProcessor:
    """The reference profile's ControlNet cross-attention: only the first ``text_tokens`` text
    tokens (the published window, 57); ``inner`` (diffusers' processor, a sliced one under
    attention slicing) computes it."""

    def __init__(self, text_tokens: int = REFERENCE_CONTROLNET_TEXT_TOKENS, inner=None):
        self.text_tokens = text_tokens
        self.inner = inner if inner is not None else AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            encoder_hidden_states = encoder_hidden_states[:, : self.text_tokens]
        return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def unwrapped(processor):
    """The processor a VCM wrapper holds, or ``processor`` itself."""
    return processor.inner if isinstance(processor, (IgnoresFacePositions, TextWindowAttnProcessor)) else processor


def install(
    unet, module: VisualConsistencyModule, face_key_from_value: bool = False, face_together: bool = False
) -> dict[str, VCMAttnProcessor]:
    """Put ``module`` into ``unet``: a :class:`VCMAttnProcessor` on every cross-attention (sharing
    the module's layers), :class:`IgnoresFacePositions` around every other processor, and the
    projections as ``encoder_hid_proj`` (``encoder_hid_dim_type="ip_image_proj"``, as diffusers'
    IP-Adapter loader sets it). Attention slicing set on a processor carries over."""
    indices = cross_attention_processor_indices(unet)
    processors = {}
    for name, current in unet.attn_processors.items():
        current = unwrapped(current)
        if name.startswith("encoder_hid_proj."):
            # The face Resampler's own attention: its latents attend to the embedding, which
            # diffusers' QKV fusion (made for self-attention there) cannot compute.
            processors[name] = AttnProcessor2_0()
        elif name in indices:
            processor = VCMAttnProcessor(module.layers[str(indices[name])], module.roles, face_key_from_value)
            processor.slice_size = getattr(current, "slice_size", None)
            processors[name] = processor
        else:
            processors[name] = IgnoresFacePositions(current)
    unet.set_attn_processor(processors)
    unet.encoder_hid_proj = VCMImageProjection(module, ("face",) if face_together else ())
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    installed = {name: p for name, p in unet.attn_processors.items() if isinstance(p, VCMAttnProcessor)}
    set_ip_scales(installed, module.config.ip_scales or {}, module.config.face_scale)
    return installed


def uninstall(unet) -> None:
    """diffusers' default attention everywhere and no ``encoder_hid_proj``, as before :func:`install`."""
    unet.set_attn_processor(AttnProcessor2_0())
    unet.encoder_hid_proj = None
    unet.config.encoder_hid_dim_type = None


def set_ip_scales(processors: dict[str, VCMAttnProcessor], block_scales: dict[str, float], face_scale: float = 0.0) -> None:
    """Scale of the image branch per block prefix (longest prefix wins), 0 where none matches."""
    for name, processor in processors.items():
        matches = [prefix for prefix in block_scales if name.startswith(prefix + ".")]
        processor.ip_scale = block_scales[max(matches, key=len)] if matches else 0.0
        processor.face_scale = face_scale


def face_token_position(tokenizer, prompt: str) -> int | None:
    """Index of the first "face" token in the tokenized prompt (BOS included), or None."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length)["input_ids"]
    face = set(tokenizer("face", add_special_tokens=False)["input_ids"])
    return next((index for index, token in enumerate(ids) if token in face), None)


@dataclass
class IdentityConditioning:
    """Everything about one identity that all its target poses share, computed once: the text
    embeddings, the CLIP image embeds of the image prompt and the ArcFace embedding (each with
    its unconditional row: zeros), and the text position of the word "face"."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    pooled_prompt_embeds: torch.Tensor
    negative_pooled_prompt_embeds: torch.Tensor | None
    image_embeds: torch.Tensor | None = None
    """(1, 1, D) CLIP image embeds, or None: no image tokens."""
    negative_image_embeds: torch.Tensor | None = None
    face_embeds: torch.Tensor | None = None
    """(1, 1, 1, 512) ArcFace embedding, or None: no face tokens."""
    negative_face_embeds: torch.Tensor | None = None
    face_position: int | None = None
    negative_face_position: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def has_image(self) -> bool:
        return self.image_embeds is not None

    @property
    def has_face(self) -> bool:
        return self.face_embeds is not None

    def image_embeds_for(self, roles: tuple[str, ...], rows: int, do_classifier_free_guidance: bool) -> list[torch.Tensor | None]:
        """``added_cond_kwargs["image_embeds"]`` for a batch of ``rows`` images: per role, the
        unconditional rows first under guidance, as diffusers stacks its batch."""
        embeds = []
        for role in roles:
            positive, negative = getattr(self, f"{role}_embeds"), getattr(self, f"negative_{role}_embeds")
            if positive is None:
                embeds.append(None)
                continue
            positive = positive.repeat(rows, *([1] * (positive.ndim - 1)))
            if do_classifier_free_guidance:
                positive = torch.cat([negative.repeat(rows, *([1] * (negative.ndim - 1))), positive])
            embeds.append(positive)
        return embeds

    def face_positions_for(self, rows: int, do_classifier_free_guidance: bool, device) -> torch.Tensor | None:
        """``cross_attention_kwargs["face_positions"]``: per batch row, the position whose value
        takes the face; -1 leaves a row alone."""
        if not self.has_face:
            return None
        position = -1 if self.face_position is None else self.face_position
        negative = -1 if self.negative_face_position is None else self.negative_face_position
        return torch.tensor(([negative] * rows if do_classifier_free_guidance else []) + [position] * rows, device=device)
