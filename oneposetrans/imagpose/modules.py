"""The modules IMAGPose adds to an SD1.5 UNet: the pose encoder, the FLC tokenizer and the
cross-view attention (CVA) modules, with a loader for AnimateDiff-v2 motion-module files.

Parameter names of the CVA modules are those of AnimateDiff's motion modules (Guo et al., 2024),
from which IMAGPose initialises them, so a published file loads by key name. The three are
diffusers models (``ModelMixin`` + ``ConfigMixin``): components of the IMAGPose pipeline, saved
and loaded as its other components are.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from oneposetrans.errors import BadInputError


class PoseEncoder(ModelMixin, ConfigMixin):
    """ControlNet's condition encoder (Zhang et al., 2023) as IMAGPose uses it: the pose canvas
    (RGB in [0, 1]) to ``out_channels`` features at 1/8 resolution, added after ``conv_in``.
    The output convolution starts at zero, so an untrained encoder changes nothing."""

    @register_to_config
    def __init__(self, out_channels: int = 320, channels: tuple[int, ...] = (16, 32, 96, 256)):
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for inner, outer in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(inner, inner, 3, padding=1))
            self.blocks.append(nn.Conv2d(inner, outer, 3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.conv_in(pose))
        for block in self.blocks:
            hidden = F.silu(block(hidden))
        return self.conv_out(hidden)


class FeatureTokenizer(ModelMixin, ConfigMixin):
    """The feature-level conditioning (FLC) context: an image encoder's tokens (DINOv2
    ``last_hidden_state``) followed by tokens of the source's VAE latent, one per 16x16 latent patch.

    ``encoder_width`` other than ``width`` (the UNet's cross-attention width, 768 for SD1.5)
    gets a linear projection; with ``views`` > 1, each source view's tokens get a learned view
    embedding, so the UNet can tell the views apart (the published code tokenised one source).
    """

    @register_to_config
    def __init__(self, width: int = 768, encoder_width: int = 768, latent_channels: int = 4, patch: int = 16, views: int = 3):
        super().__init__()
        self.patch = patch
        self.latent_tokens = nn.Conv2d(latent_channels, width, patch, stride=patch)
        self.projection = nn.Linear(encoder_width, width) if encoder_width != width else nn.Identity()
        self.view_embedding = nn.Parameter(torch.zeros(views, width))

    def forward(self, image_tokens: torch.Tensor, latents: torch.Tensor, view: int = 0) -> torch.Tensor:
        """``image_tokens`` (B, N, encoder_width) and ``latents`` (B, 4, h, w) of one view -> (B, N + M, width)."""
        if latents.shape[-1] < self.patch or latents.shape[-2] < self.patch:
            raise BadInputError(f"the source latent {tuple(latents.shape[-2:])} is smaller than one {self.patch}x{self.patch} patch")
        latent = self.latent_tokens(latents).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.projection(image_tokens), latent], dim=1)
        return tokens + self.view_embedding[view]


# --- cross-view attention ----------------------------------------------------------------------


class PositionalEncoding(nn.Module):
    """Sinusoidal position of each tile along the view axis (``pe``, as AnimateDiff stores it)."""

    def __init__(self, width: int, max_len: int = 32):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
        pe = torch.zeros(1, max_len, width)
        pe[0, :, 0::2] = torch.sin(position * frequency)
        pe[0, :, 1::2] = torch.cos(position * frequency)
        self.register_buffer("pe", pe)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.pe[:, : hidden.shape[1]].to(hidden.dtype)


class ViewAttention(nn.Module):
    """Self-attention over the views at each spatial position (sequence length: the tiles)."""

    def __init__(self, width: int, heads: int = 8):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(width, width, bias=False)
        self.to_v = nn.Linear(width, width, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(width, width), nn.Dropout(0.0)])
        self.pos_encoder = PositionalEncoding(width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.pos_encoder(hidden)
        batch, length, width = hidden.shape
        q, k, v = (f(hidden).view(batch, length, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, width)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    def __init__(self, width: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(width, inner * 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(hidden).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, width: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(width, width * mult), nn.Dropout(0.0), nn.Linear(width * mult, width)])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            hidden = layer(hidden)
        return hidden


class ViewTransformerBlock(nn.Module):
    def __init__(self, width: int, heads: int = 8, attentions: int = 2):
        super().__init__()
        self.attention_blocks = nn.ModuleList([ViewAttention(width, heads) for _ in range(attentions)])
        self.norms = nn.ModuleList([nn.LayerNorm(width) for _ in range(attentions)])
        self.ff = FeedForward(width)
        self.ff_norm = nn.LayerNorm(width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            hidden = attention(norm(hidden)) + hidden
        return self.ff(self.ff_norm(hidden)) + hidden


class ViewTransformer(nn.Module):
    """AnimateDiff's temporal transformer with the canvas's tiles as its frames."""

    def __init__(self, width: int, heads: int = 8, layers: int = 1, groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(groups, width, eps=1e-6)
        self.proj_in = nn.Linear(width, width)
        self.transformer_blocks = nn.ModuleList([ViewTransformerBlock(width, heads) for _ in range(layers)])
        self.proj_out = nn.Linear(width, width)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames`` (B, F, C, h, w) -> the same shape."""
        batch, count, width, height, breadth = frames.shape
        hidden = self.norm(frames.reshape(batch * count, width, height, breadth))
        # Attention runs over the F tiles at each of the h*w positions.
        hidden = hidden.view(batch, count, width, height * breadth).permute(0, 3, 1, 2).reshape(-1, count, width)
        hidden = self.proj_in(hidden)
        for block in self.transformer_blocks:
            hidden = block(hidden)
        hidden = self.proj_out(hidden)
        hidden = hidden.view(batch, height * breadth, count, width).permute(0, 2, 3, 1).reshape(frames.shape)
        return hidden + frames


class MotionModule(nn.Module):
    """One CVA module; ``temporal_transformer`` keeps AnimateDiff's key names."""

    def __init__(self, width: int, heads: int = 8, groups: int = 32):
        super().__init__()
        self.temporal_transformer = ViewTransformer(width, heads, groups=groups)
        # As AnimateDiff: the module starts as the identity.
        nn.init.zeros_(self.temporal_transformer.proj_out.weight)
        nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        """A (B, C, 2h, 2w) canvas feature map: its 2x2 quadrants attend to each other."""
        return from_tiles(self.temporal_transformer(to_tiles(canvas)))


def to_tiles(canvas: torch.Tensor) -> torch.Tensor:
    """(B, C, 2h, 2w) -> (B, 4, C, h, w), tiles in canvas order (TL, TR, BL, BR)."""
    batch, width, height, breadth = canvas.shape
    tiles = canvas.view(batch, width, 2, height // 2, 2, breadth // 2)
    return tiles.permute(0, 2, 4, 1, 3, 5).reshape(batch, 4, width, height // 2, breadth // 2)


def from_tiles(tiles: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_tiles`."""
    batch, _, width, height, breadth = tiles.shape
    canvas = tiles.view(batch, 2, 2, width, height, breadth).permute(0, 3, 1, 4, 2, 5)
    return canvas.reshape(batch, width, 2 * height, 2 * breadth)


class CrossViewAttention(ModelMixin, ConfigMixin):
    """The 21 CVA modules of an SD1.5 UNet, named as in a motion-module file:
    ``down_blocks.i.motion_modules.j`` (two per down block), ``mid_block.motion_modules.0``,
    ``up_blocks.i.motion_modules.j`` (three per up block)."""

    @register_to_config
    def __init__(self, block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280), layers_per_block: int = 2, heads: int = 8, groups: int = 32):
        super().__init__()

        def blocks(channels, count):
            block = nn.Module()
            block.motion_modules = nn.ModuleList([MotionModule(channels, heads, groups) for _ in range(count)])
            return block

        self.down_blocks = nn.ModuleList([blocks(c, layers_per_block) for c in block_out_channels])
        self.mid_block = blocks(block_out_channels[-1], 1)
        self.up_blocks = nn.ModuleList([blocks(c, layers_per_block + 1) for c in reversed(block_out_channels)])


def load_motion_modules(cva: CrossViewAttention, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Load a motion-module file (AnimateDiff v2 layout, ``.safetensors``, or ``.pth``/``.ckpt``
    read with ``weights_only``) into ``cva`` by key name; returns (matched, unmatched file keys).

    Keys may carry a ``module.`` or ``unet.`` prefix. Positional tables longer than the 4 tiles
    are kept whole (the tiles use the first positions). A key of the right name with the wrong
    shape is refused in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such motion-module file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    own = cva.state_dict()
    matched, unmatched, loaded = [], [], {}
    for key, value in state.items():
        name = key.removeprefix("module.").removeprefix("unet.")
        if name not in own:
            unmatched.append(key)
            continue
        if own[name].shape != value.shape:
            raise BadInputError(f"{path}: {key} has shape {tuple(value.shape)}, the CVA module expects {tuple(own[name].shape)}")
        loaded[name] = value
        matched.append(key)
    cva.load_state_dict(loaded, strict=False)
    return matched, unmatched
