"""The IMAGPose denoiser: an SD1.5 UNet on the joint canvas with the image-level conditions
(ILC) as extra input channels, the pose features added after ``conv_in``, and a cross-view
attention module after every spatial transformer (and after each resnet of the blocks that have
no attention): 21 places in SD1.5.

The UNet stays diffusers' ``UNet2DConditionModel``; the additions ride on forward hooks, so its
weights, attention processors and memory options are the stock ones.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from oneposetrans.imagpose.modules import CrossViewAttention, PoseEncoder

LATENT_CHANNELS = 4
ILC_CHANNELS = 2 * LATENT_CHANNELS + 1
"""noisy latent (4), flag map (1: given, 0: generate), latent of the masked canvas (4)."""


def widen_conv_in(unet, fresh: bool = False, seed: int = 0) -> None:
    """Give a stock 4-channel UNet the 9-channel ILC input in place, keeping its bias.

    ``fresh=False``: the stock weight on the latent channels and zero on the new ones, so the
    widened UNet computes what the stock one did until it is trained. ``fresh=True``: the whole
    weight newly initialised (PyTorch's default, drawn from ``seed``), which is what the published
    ``from_pretrained(..., in_channels=9, ignore_mismatched_sizes=True)`` load leaves: the weight's
    shape differs from the checkpoint's, so it is skipped, while the bias's does not.
    """
    old = unet.conv_in
    if old.in_channels == ILC_CHANNELS:
        return
    new = torch.nn.utils.skip_init(nn.Conv2d, ILC_CHANNELS, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        if fresh:
            # nn.Conv2d's own first draw (its weight's), from a generator of its own rather than
            # torch's global one: what torch.manual_seed(seed) then nn.Conv2d(...) gives.
            nn.init.kaiming_uniform_(new.weight, a=math.sqrt(5), generator=torch.Generator().manual_seed(seed))
        else:
            new.weight.zero_()
            new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new.to(old.weight)
    unet.register_to_config(in_channels=ILC_CHANNELS)


def cva_sites(unet) -> list[tuple[nn.Module, str]]:
    """The modules after which a CVA module runs, with its name in :class:`CrossViewAttention`."""
    sites = []
    for kind, blocks in (("down_blocks", unet.down_blocks), ("up_blocks", unet.up_blocks)):
        for index, block in enumerate(blocks):
            hosts = getattr(block, "attentions", None) or block.resnets
            sites += [(host, f"{kind}.{index}.motion_modules.{j}") for j, host in enumerate(hosts)]
    sites.append((unet.mid_block.attentions[0], "mid_block.motion_modules.0"))
    return sites


class _Additions:
    """What IMAGPose adds to one UNet's forward, read by hooks registered once on it: the pose
    features added after ``conv_in``, and the CVA modules run after their hosts when ``tiled``.
    Each denoiser call sets them, so several denoisers (pipelines) may share one UNet."""

    def __init__(self, unet):
        self.pose_features: torch.Tensor | None = None
        self.tiled = False
        self.motion_modules: dict[str, nn.Module] = {}
        unet.conv_in.register_forward_hook(self._add_pose)
        for host, name in cva_sites(unet):
            host.register_forward_hook(self._cross_view(name))

    def _add_pose(self, module, inputs, output):
        return output if self.pose_features is None else output + self.pose_features

    def _cross_view(self, name: str):
        def hook(module, inputs, output):
            if not self.tiled:
                return output
            motion_module = self.motion_modules[name]
            if isinstance(output, tuple):
                return (motion_module(output[0]), *output[1:])
            if hasattr(output, "sample"):
                output.sample = motion_module(output.sample)
                return output
            return motion_module(output)

        return hook


def _additions(unet) -> _Additions:
    if getattr(unet, "_imagpose_additions", None) is None:
        unet._imagpose_additions = _Additions(unet)
    return unet._imagpose_additions


class ImagPoseDenoiser(nn.Module):
    """UNet + pose encoder + CVA; :meth:`forward` takes the 9-channel canvas input."""

    def __init__(self, unet, pose_encoder: PoseEncoder, cva: CrossViewAttention | None):
        super().__init__()
        if unet.config.in_channels != ILC_CHANNELS:
            raise ValueError(f"the UNet has {unet.config.in_channels} input channels; IMAGPose's has {ILC_CHANNELS} (see imagpose init)")
        self.unet = unet
        self.pose_encoder = pose_encoder
        self.cva = cva
        self._additions = _additions(unet)
        self._motion_modules = dict(cva.named_modules()) if cva is not None else {}

    def encode_pose(self, pose: torch.Tensor) -> torch.Tensor:
        """The pose canvas (B, 3, H, W) in [0, 1] as the features added after ``conv_in``. A
        sampler computes them once: the pose does not change between denoising steps."""
        return self.pose_encoder(pose.to(next(self.pose_encoder.parameters()).dtype))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        context: torch.Tensor,
        pose: torch.Tensor | None = None,
        tiled: bool = True,
        pose_features: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``sample`` (B, 9, H/8, W/8) of a canvas, ``context`` the FLC tokens, ``pose`` the pose
        canvas (B, 3, H, W) in [0, 1] or None, or its :meth:`encode_pose` as ``pose_features``;
        ``tiled`` False runs no CVA (a single picture, or training phase 1); ``context_mask``
        (B, tokens) True on the tokens to attend to, when some are padding."""
        additions = self._additions
        additions.pose_features = pose_features if pose is None else self.encode_pose(pose)
        additions.tiled = tiled and self.cva is not None
        additions.motion_modules = self._motion_modules
        try:
            return self.unet(sample, timestep, encoder_hidden_states=context, encoder_attention_mask=context_mask, return_dict=False)[0]
        finally:
            additions.pose_features = None
