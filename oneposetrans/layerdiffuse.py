"""LayerDiffuse for SDXL (Zhang and Agrawala, "Transparent Image Layer Diffusion using Latent
Transparency", arXiv 2402.17113), as OnePoseTrans uses it:

* attention offsets added to the UNet weights, so that SDXL denoises "transparent latents";
* the transparent decoder: a UNet over the decoded RGB and the latent that predicts alpha and
  foreground colour, run 8 times (4 rotations, with and without a horizontal flip) and reduced
  by the median;
* the transparent encoder: a small conv net whose output (times 300) offsets the VAE latent of an
  alpha-premultiplied image, used by the refining stage.

The module names follow the published ``ld_diffusers_sdxl_*.safetensors`` files, which are bare
state dicts; layer widths are read from the file, so the tiny kit's narrow copies load the same way.
Decoder and encoder are diffusers models (``ModelMixin`` + ``ConfigMixin``): registered in a
pipeline, they move, offload and save as its other components do.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block
from safetensors.torch import load_file
from torch import nn

logger = logging.getLogger(__name__)

PUBLISHED_DECODER_WIDTHS = (32, 32, 64, 128, 256, 512, 512)
LATENT_INJECTION_LEVEL = 3
"""The latent joins the pixel features after three downsamplings, at the latent's resolution."""
ENCODER_OFFSET_SCALE = 300.0


def merge_attention_offsets(unet: nn.Module, path: str | os.PathLike) -> int:
    """W <- W + dW for every UNet weight named in the offsets file; returns how many were merged.

    As published, offsets that name no UNet weight are skipped (with a warning that counts them);
    a file most of whose keys match nothing is not an offsets file for this UNet and is refused.
    """
    offsets = load_file(path)
    parameters = dict(unet.named_parameters())
    unknown = [key for key in offsets if key not in parameters]
    if len(unknown) * 2 > len(offsets):
        raise ValueError(f"{path}: {len(unknown)} of {len(offsets)} offsets match no UNet weight, e.g. {unknown[0]}")
    if unknown:
        logger.warning("%s: %d of %d offsets match no UNet weight and were skipped, e.g. %s", path, len(unknown), len(offsets), unknown[0])
    with torch.no_grad():
        for key, delta in offsets.items():
            if key in parameters:
                weight = parameters[key]
                weight.copy_((weight.float() + delta.to(weight.device, torch.float32)).to(weight.dtype))
    return len(offsets) - len(unknown)


class TransparentDecoderUNet(ModelMixin, ConfigMixin):
    """Seven-level pixel UNet (no time embedding) that reads the decoded RGB and the latent and
    returns 4 channels: alpha, then foreground RGB, all in 0..1 after clipping."""

    @register_to_config
    def __init__(
        self,
        block_out_channels: tuple[int, ...] = PUBLISHED_DECODER_WIDTHS,
        in_channels: int = 3,
        out_channels: int = 4,
        latent_channels: int = 4,
        layers_per_block: int = 2,
        attention_head_dim: int = 8,
        norm_num_groups: int = 4,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        levels = len(block_out_channels)
        attention_levels = 3
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.latent_conv_in = nn.Conv2d(latent_channels, block_out_channels[LATENT_INJECTION_LEVEL - 1], kernel_size=1)
        common = dict(
            temb_channels=None,
            resnet_eps=norm_eps,
            resnet_act_fn="silu",
            resnet_groups=norm_num_groups,
            attention_head_dim=attention_head_dim,
            resnet_time_scale_shift="default",
            dropout=0.0,
        )
        self.down_blocks = nn.ModuleList()
        previous = block_out_channels[0]
        for level, width in enumerate(block_out_channels):
            kind = "AttnDownBlock2D" if level >= levels - attention_levels else "DownBlock2D"
            self.down_blocks.append(
                get_down_block(
                    kind, num_layers=layers_per_block, in_channels=previous, out_channels=width,
                    add_downsample=level < levels - 1, downsample_padding=1, downsample_type="conv", **common,
                )
            )
            previous = width
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], temb_channels=None, dropout=0.0, resnet_eps=norm_eps,
            resnet_act_fn="silu", output_scale_factor=1, resnet_time_scale_shift="default",
            attention_head_dim=attention_head_dim, resnet_groups=norm_num_groups, attn_groups=None, add_attention=True,
        )
        self.up_blocks = nn.ModuleList()
        reversed_widths = list(reversed(block_out_channels))
        previous = reversed_widths[0]
        for level, width in enumerate(reversed_widths):
            kind = "AttnUpBlock2D" if level < attention_levels else "UpBlock2D"
            self.up_blocks.append(
                get_up_block(
                    kind, num_layers=layers_per_block + 1,
                    in_channels=reversed_widths[min(level + 1, levels - 1)], out_channels=width,
                    prev_output_channel=previous, add_upsample=level < levels - 1, upsample_type="conv", **common,
                )
            )
            previous = width
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    def forward(self, pixel: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        injected = self.latent_conv_in(latent)
        sample = self.conv_in(pixel)
        skips = (sample,)
        for level, block in enumerate(self.down_blocks):
            if level == LATENT_INJECTION_LEVEL:
                sample = sample + injected
            sample, residuals = block(hidden_states=sample, temb=None)
            skips += residuals
        sample = self.mid_block(sample, None)
        for block in self.up_blocks:
            count = len(block.resnets)
            sample = block(sample, skips[-count:], None)
            skips = skips[:-count]
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))

    @classmethod
    def from_single_file(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> "TransparentDecoderUNet":
        state = load_file(path)
        try:
            widths = tuple(state[f"down_blocks.{level}.resnets.0.conv1.weight"].shape[0] for level in range(7))
        except KeyError:
            raise ValueError(f"{path}: not a LayerDiffuse transparent decoder (no down_blocks.*.resnets)") from None
        model = cls(block_out_channels=widths)
        model.load_state_dict(state, strict=True)
        return model.to(dtype).eval()


# The eight views: (horizontal flip, quarter turns).
AUGMENTATIONS = tuple((flip, turns) for flip in (False, True) for turns in range(4))


@torch.no_grad()
def decode_transparent(
    decoder: TransparentDecoderUNet, pixel: torch.Tensor, latent: torch.Tensor, batched: bool = True
) -> torch.Tensor:
    """RGBA in 0..1, (B, 4, H, W) with alpha last, from the decoded RGB (0..1) and the latent.

    Each image is decoded in all 8 flip/rotation views, undone, and the per-pixel median kept.
    ``batched`` decodes the views of one shape together: one decoder call per image when it is
    square, two otherwise (upright and quarter-turned views), where the published decoder made
    eight; the decoder treats every sample alone, so only floating-point rounding can differ.
    """
    outputs = []
    pixel = pixel.to(decoder.dtype)
    latent = latent.to(decoder.dtype)
    for index in range(pixel.shape[0]):
        views = [_view(pixel[index : index + 1], latent[index : index + 1], flip, turns) for flip, turns in AUGMENTATIONS]
        decoded: list[torch.Tensor] = [None] * len(views)
        groups: dict[tuple, list[int]] = {}
        for number, (p, _) in enumerate(views):
            groups.setdefault(tuple(p.shape) if batched else (number,), []).append(number)
        for members in groups.values():
            y = decoder(torch.cat([views[n][0] for n in members]), torch.cat([views[n][1] for n in members])).clip(0, 1)
            for number, single in zip(members, y.split(1)):
                flip, turns = AUGMENTATIONS[number]
                single = torch.rot90(single, -turns, (2, 3))
                decoded[number] = single.flip(3) if flip else single
        median = torch.stack(decoded).median(dim=0).values.clip(0, 1)
        outputs.append(torch.cat([median[:, 1:], median[:, :1]], dim=1))
    return torch.cat(outputs)


def _view(pixel: torch.Tensor, latent: torch.Tensor, flip: bool, turns: int) -> tuple[torch.Tensor, torch.Tensor]:
    if flip:
        pixel, latent = pixel.flip(3), latent.flip(3)
    return torch.rot90(pixel, turns, (2, 3)), torch.rot90(latent, turns, (2, 3))


class TransparentOffsetEncoder(ModelMixin, ConfigMixin):
    """Alpha + padded RGB (4 channels, full resolution) -> latent offset (4 channels, /8)."""

    WIDTHS = (32, 32, 64, 64, 128, 128, 256, 256)
    STRIDES = (1, 1, 2, 1, 2, 1, 2, 1)

    @register_to_config
    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        previous = 4
        for width, stride in zip(self.WIDTHS, self.STRIDES):
            layers += [nn.Conv2d(previous, width, kernel_size=3, padding=1, stride=stride), nn.SiLU()]
            previous = width
        layers.append(nn.Conv2d(previous, 4, kernel_size=3, padding=1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    @classmethod
    def from_single_file(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> "TransparentOffsetEncoder":
        model = cls()
        try:
            model.load_state_dict(load_file(path), strict=True)
        except RuntimeError as error:
            raise ValueError(f"{path}: not a LayerDiffuse transparent encoder ({str(error).splitlines()[0]})") from None
        return model.to(dtype).eval()


def pad_colour(rgba: np.ndarray, shrink: float = 1.2) -> np.ndarray:
    """Fill the transparent area with colour spread outward from the visible pixels.

    Premultiplied colour and alpha are shrunk by 1/1.2 repeatedly down to one pixel, then
    composited back up, each level filling its uncovered part from the coarser level: the
    pyramid form of a very wide Gaussian fill. Returns float RGB in 0..1.
    """
    import cv2

    rgba = rgba.astype(np.float32) / 255.0
    colour, alpha = rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]
    levels = [(colour, alpha)]
    while min(alpha.shape[:2]) > 1:
        height, width = alpha.shape[:2]
        size = (int(width / shrink), int(height / shrink))
        colour = cv2.resize(colour, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)[..., None]
        levels.append((colour, alpha))
    top_colour, top_alpha = levels[-1]
    filled = top_colour.sum(axis=(0, 1), keepdims=True) / np.clip(top_alpha.sum(axis=(0, 1), keepdims=True), 1e-8, None)
    for colour, alpha in reversed(levels):
        filled = cv2.resize(filled, (alpha.shape[1], alpha.shape[0]), interpolation=cv2.INTER_LINEAR)
        if filled.ndim == 2:
            filled = filled[..., None]
        filled = colour + filled * (1.0 - alpha)
    return filled


@torch.no_grad()
def rgba_to_uint8(rgba: torch.Tensor, truncate: bool) -> np.ndarray:
    """Decoded RGBA (batch, 4, H, W) in [0, 1] as uint8 images (batch, H, W, 4). ``truncate``: as
    the published decoder did, x255 in the decoder's own dtype (fp16 on a GPU), then truncated;
    otherwise x255 in fp32 and rounded."""
    scaled = rgba * 255.0 if truncate else rgba.float() * 255.0
    array = scaled.float().movedim(1, -1).cpu().numpy()
    return (array if truncate else array.round()).clip(0, 255).astype(np.uint8)


def encode_transparent(vae, encoder: TransparentOffsetEncoder, rgba_images: list[np.ndarray]) -> torch.Tensor:
    """Latents (unscaled VAE space) of RGBA uint8 images: the VAE mean of the premultiplied
    image plus its std times the encoder's offset (x300), deterministic.

    An fp16 VAE that asks for upcasting (``force_upcast``, as SDXL's does: it overflows in fp16)
    encodes in fp32; any other VAE (the reference profile's bf16 copy, as published) encodes in its own dtype."""
    padded = torch.from_numpy(np.stack([pad_colour(image) for image in rgba_images])).movedim(-1, 1).float()
    rgba = torch.from_numpy(np.stack(rgba_images)).movedim(-1, 1).float() / 255.0
    rgb, alpha = rgba[:, :3], rgba[:, 3:]
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        distribution = vae.encode(((rgb * 2.0 - 1.0) * alpha).to(vae.device, vae.dtype)).latent_dist
    finally:
        if upcast:
            vae.to(torch.float16)
    offset = encoder(torch.cat([alpha, padded], dim=1).to(vae.device, next(encoder.parameters()).dtype))
    return distribution.mean + distribution.std * (offset * ENCODER_OFFSET_SCALE).to(distribution.std)
