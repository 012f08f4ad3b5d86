"""The Visual Consistency Module (OnePoseTrans, arXiv 2409.09593; the published pipeline_stable_diffusion_xl_oneposetrans.py).

Three signals condition every cross-attention layer of the SDXL UNet:

* the caption's 77 text tokens;
* an IP-Adapter image prompt: CLIP ViT-H ``image_embeds`` projected to 4 tokens, attended in a
  separate branch added with a per-block scale ("style injection": 1.0 at
  ``up_blocks.0.attentions.1``, 0.4 at ``up_blocks.0.attentions.0``, 0 elsewhere);
* an InstantID face embedding: ArcFace 512-d through a Perceiver Resampler to 16 tokens, pooled
  into one vector that replaces the *value* of the caption's "face" token in every layer.

The encoder sequence is ``[text 77 | image 4 | face 16]``; :class:`VCMLayout` says which parts a
call carries. Published checkpoints are read with their own key names: the IP-Adapter file
(``image_proj`` + ``ip_adapter``) and InstantID's ``ip-adapter.bin`` (same layout, whose K/V
become the ``to_face_*`` projections).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from oneposetrans.errors import BadInputError

TEXT_TOKENS = 77
IMAGE_TOKENS = 4
FACE_TOKENS = 16
# Reference: the published ControlNet processor strips 4 + 16 adapter tokens from the 77 it is
# given, so the ControlNet reads text tokens 0..56 only.
REFERENCE_CONTROLNET_TEXT_TOKENS = TEXT_TOKENS - IMAGE_TOKENS - FACE_TOKENS
REFERENCE_FACE_POSITION = 4
FACE_BOOST = 4.0


@dataclass
class VCMLayout:
    """What the current encoder sequence holds; shared by every VCM processor of a UNet."""

    image_tokens: int = 0
    face_tokens: int = 0
    face_positions: torch.Tensor | None = None
    """Per batch row, the text position whose value takes the face vector; -1 leaves a row alone."""
    face_key_from_value: bool = False
    """Reference quirk: the face key used the value projection (only matters if face_scale > 0)."""
    kept: dict = field(default_factory=dict)
    """Per processor, the keys and values it computed for the current identity (see
    :meth:`VCMAttnProcessor._identity_keys_values`)."""

    def changed(self) -> None:
        """The tokens now belong to another identity or call: drop everything kept for the last."""
        self.kept.clear()


class VCMAttnProcessor(nn.Module):
    """Cross-attention with the VCM: face-value replacement and the scaled image branch.

    Branches whose scale is 0 are not computed, and no attention maps are kept: the published
    processor computed a scale-0 face branch and three debugging maps in all 70 layers.
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, layout: VCMLayout):
        super().__init__()
        self.layout = layout
        self.ip_scale = 0.0
        self.face_scale = 0.0
        self.slice_size: int | None = None
        """Attention computed this many (batch x head) rows at a time, as diffusers'
        ``SlicedAttnProcessor`` does under ``enable_attention_slicing``; None: all at once."""
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_face_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_face_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def _heads(self, attn, tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
        return tensor.view(batch_size, -1, attn.heads, tensor.shape[-1] // attn.heads).transpose(1, 2)

    def _identity_keys_values(self, attn, encoder_hidden_states: torch.Tensor, batch_size: int) -> tuple:
        """Text key, text value with the face vector in place, image-prompt key and value, and
        the face value, all in heads layout: the same at every denoising step of one identity,
        so they are computed at the first step and kept in the layout until it changes, for as
        long as the sequence tensor stays the same (at most two sequences: samplers that call the
        UNet for the conditional and unconditional halves separately). Identical to recomputing them."""
        layout = self.layout
        keep = not torch.is_grad_enabled()  # a kept tensor must not carry an autograd graph across calls
        version = (_version_of(encoder_hidden_states), self.ip_scale, self.face_scale)
        if keep:
            for source, kept_version, kept in layout.kept.get(self, ()):
                if source is encoder_hidden_states and kept_version == version:
                    return kept
        extra = layout.image_tokens + layout.face_tokens
        text = encoder_hidden_states[:, : encoder_hidden_states.shape[1] - extra]
        image = encoder_hidden_states[:, text.shape[1] : text.shape[1] + layout.image_tokens]
        face = encoder_hidden_states[:, text.shape[1] + layout.image_tokens :]
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        key = attn.to_k(text)
        value = attn.to_v(text)
        face_value = None
        if layout.face_tokens:
            face_value = self.to_face_v_ip(face)
            value = _replace_face_value(value, face_value, layout.face_positions)
        key, value = self._heads(attn, key, batch_size), self._heads(attn, value, batch_size)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        ip_key = ip_value = face_key = None
        if layout.image_tokens and self.ip_scale != 0:
            ip_key = self._heads(attn, self.to_k_ip(image), batch_size)
            ip_value = self._heads(attn, self.to_v_ip(image), batch_size)
        if layout.face_tokens and self.face_scale != 0:
            face_key = self._heads(attn, (self.to_face_v_ip if layout.face_key_from_value else self.to_face_k_ip)(face), batch_size)
            face_value = self._heads(attn, face_value, batch_size)
        kept = (key, value, ip_key, ip_value, face_key, face_value)
        if keep:
            layout.kept[self] = [*layout.kept.get(self, [])[-1:], (encoder_hidden_states, version, kept)]
        return kept

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
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
        key, value, ip_key, ip_value, face_key, face_value = self._identity_keys_values(attn, encoder_hidden_states, batch_size)
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


def _version_of(tensor: torch.Tensor) -> int:
    """The in-place version counter; inference tensors have none (and cannot change outside
    inference mode)."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


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


class TextOnlyAttnProcessor:
    """The ControlNet's cross-attention sees the first ``text_tokens`` of the sequence only;
    ``inner`` (diffusers' processor by default, a sliced one under attention slicing) computes it."""

    def __init__(self, text_tokens: int = TEXT_TOKENS, inner=None):
        self.text_tokens = text_tokens
        self.inner = inner if inner is not None else AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            encoder_hidden_states = encoder_hidden_states[:, : self.text_tokens]
        return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def load_adapter_checkpoint(path: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": ..., "ip_adapter": ...}`` from a published ``.bin`` (nested dicts) or
    ``.safetensors`` (flat, ``image_proj.``/``ip_adapter.`` prefixes) IP-Adapter file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(path)
        nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, tensor in flat.items():
            group, _, rest = key.partition(".")
            if group in nested:
                nested[group][rest] = tensor
        state = nested
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not state.get("image_proj") or not state.get("ip_adapter"):
        raise BadInputError(f"{path}: not an IP-Adapter checkpoint (needs image_proj and ip_adapter weights)")
    return state


def cross_attention_processor_indices(unet) -> dict[str, int]:
    """Processor name -> its index among all UNet processors, the numbering of the published
    ``ip_adapter`` keys (``1.to_k_ip.weight`` is the first cross-attention)."""
    return {name: index for index, name in enumerate(unet.attn_processors) if name.endswith("attn2.processor")}


_ADAPTER_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")


def install_vcm(unet, image_adapter: dict | None, face_adapter: dict | None, layout: VCMLayout) -> dict[str, VCMAttnProcessor]:
    """Give every UNet cross-attention a :class:`VCMAttnProcessor` loaded from the published
    adapter weights (image K/V from the IP-Adapter, face K/V from InstantID)."""
    indices = cross_attention_processor_indices(unet)
    expected = set(indices.values())
    weights: dict[int, dict[str, torch.Tensor]] = {}
    for adapter, prefix, what in ((image_adapter, "", "IP-Adapter"), (face_adapter, "face_", "InstantID")):
        if adapter is None:
            continue
        layers = set()
        for key, tensor in adapter.items():
            match = _ADAPTER_KEY.match(key)
            if match is None:
                raise BadInputError(f"unexpected adapter weight {key!r}")
            layers.add(int(match.group(1)))
            name = match.group(2).replace("to_", f"to_{prefix}", 1)
            weights.setdefault(int(match.group(1)), {})[f"{name}.weight"] = tensor
        if layers != expected:
            raise BadInputError(f"{what} weights cover {len(layers)} cross-attention layers, this UNet has {len(expected)}")

    processors = {}
    for name, processor in unet.attn_processors.items():
        if name not in indices:
            processors[name] = AttnProcessor2_0()
            continue
        attn = unet.get_submodule(name.removesuffix(".processor"))
        vcm = VCMAttnProcessor(attn.to_q.out_features, attn.to_k.in_features, layout)
        vcm.load_state_dict(weights.get(indices[name], {}), strict=False)
        processors[name] = vcm
    unet.set_attn_processor(processors)
    return {name: p for name, p in unet.attn_processors.items() if isinstance(p, VCMAttnProcessor)}


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
    """Everything about one identity that all its target poses share, computed once."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    negative_pooled_prompt_embeds: torch.Tensor
    image_tokens: int = 0
    face_tokens: int = 0
    face_position: int | None = None
    negative_face_position: int | None = None
    notes: list[str] = field(default_factory=list)
