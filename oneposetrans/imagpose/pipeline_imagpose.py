"""``ImagPosePipeline``: every IMAGPose scenario in one denoising pass over the joint canvas.

A diffusers ``DiffusionPipeline``: its components are registered (the VAE, the 9-channel UNet,
the pose encoder, the FLC feature tokenizer, the cross-view attention, the image encoder
DINOv2 and the DDIM scheduler), a checkpoint folder is its ``save_pretrained`` folder
(:mod:`oneposetrans.imagpose.checkpoint`) and ``from_pretrained`` reads it. :meth:`__call__`
reads top to bottom: lay the tiles out for the mode, encode the given tiles and the reference
tokens, denoise with classifier-free guidance on the FLC tokens only (pose, flags and the masked
latent stay in both branches, as in the published sampler), decode, and cut each result tile
back to its target's frame.

Fixed from the published sampler (README *IMAGPose*): the beta schedule is the training one
(scaled-linear, v-prediction, zero terminal SNR, trailing spacing; the published inference used
"linear"); the reference's VAE tokens come from its tile, as in training (the published
inference resized the reference to the whole canvas); the image encoder sees the reference
padded to a square, not centre-cropped (which cut heads and feet); every source view is
tokenised with its view embedding (the published code used the first source only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from PIL import Image
from transformers import Dinov2Model

from oneposetrans.errors import BadInputError
from oneposetrans.imagpose import canvas as joint
from oneposetrans.imagpose.modules import CrossViewAttention, FeatureTokenizer, PoseEncoder, to_tiles
from oneposetrans.imagpose.unet import ImagPoseDenoiser
from oneposetrans.settings import ImagPoseSettings

# CLIP's normalisation, which the published FLC preprocessing applied before DINOv2.
IMAGE_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32).reshape(3, 1, 1)
IMAGE_STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32).reshape(3, 1, 1)
IMAGE_SIDE = 224


ENCODER_INPUTS = ("padded", "squashed", "centre crop")


def encoder_pixels(picture: Image.Image, fit: str = "padded") -> np.ndarray:
    """The image encoder's input (3, 224, 224), CLIP-normalised. ``fit``: "padded" (the photo
    padded to a square with black, then resized: the whole person, undistorted), "squashed"
    (resized to 224x224, as the published sampler did) or "centre crop" (CLIP's processor, as the
    published training loader did: the shorter side to 224, the middle 224x224 kept)."""
    picture = picture.convert("RGB")
    if fit == "centre crop":
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil()(images=picture, return_tensors="np").pixel_values[0].astype(np.float32)
    if fit == "padded":
        side = max(picture.size)
        square = Image.new("RGB", (side, side))
        square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
        picture = square
    elif fit != "squashed":
        raise ValueError(f"encoder input {fit!r}: choose from {', '.join(ENCODER_INPUTS)}")
    pixels = np.asarray(picture.resize((IMAGE_SIDE, IMAGE_SIDE), Image.BICUBIC), np.float32).transpose(2, 0, 1) / 255.0
    return (pixels - IMAGE_MEAN) / IMAGE_STD


def flc_context(
    tokenizer, image_tokens: torch.Tensor, tile_latents: torch.Tensor, views: torch.Tensor | None = None, drop: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The cross-attention context of V source views, shared by sampling and training.

    ``image_tokens`` (B, V, N, E) and ``tile_latents`` (B, V, 4, h, w) -> (B, V * (N + M), width).
    ``views`` (B,) counts each sample's real views when some are padding: their tokens are
    masked out (the mask is returned). ``drop`` (B, 2) zeroes a sample's image-encoder tokens,
    its latent tokens or both: the null condition is zero tokens, as the sampler's
    unconditional branch uses.
    """
    batch, views_given, count = image_tokens.shape[:3]
    context = torch.stack([tokenizer(image_tokens[:, view], tile_latents[:, view], view=view) for view in range(views_given)], dim=1)
    if drop is not None:
        # (B, V, N + M, width): the first N tokens of each view are the image encoder's.
        keep = torch.ones_like(context[:, :1, :, :1])
        keep[:, :, :count] = (~drop[:, 0]).to(context.dtype)[:, None, None, None]
        keep[:, :, count:] = (~drop[:, 1]).to(context.dtype)[:, None, None, None]
        context = context * keep
    mask = None
    if views is not None:
        mask = (torch.arange(views_given, device=views.device)[None] < views[:, None])[:, :, None].expand(-1, -1, context.shape[2])
        mask = mask.reshape(batch, -1)
    return context.reshape(batch, -1, context.shape[-1]), mask


@dataclass
class ImagPosePipelineOutput(BaseOutput):
    """``images``: the generated targets, each at its target pose's frame, in the order of the
    targets. ``canvas``: the whole decoded canvas, for inspection."""

    images: list[Image.Image]
    canvas: Image.Image


class ImagPosePipeline(DiffusionPipeline):
    r"""IMAGPose (Shen & Tang, NeurIPS 2024): the person of the source photo(s) in the target
    pose(s), one denoising pass over a 2x2 canvas of tiles.

    Args:
        vae ([`AutoencoderKL`]): sd-vae-ft-mse for SD1.5.
        unet ([`UNet2DConditionModel`]): SD1.5 with the 9-channel image-level-condition input.
        pose_encoder ([`~oneposetrans.imagpose.modules.PoseEncoder`]): pose canvas -> features added after ``conv_in``.
        feature_tokenizer ([`~oneposetrans.imagpose.modules.FeatureTokenizer`]): the FLC tokens of each source view.
        cross_view_attention ([`~oneposetrans.imagpose.modules.CrossViewAttention`]): the 21 CVA modules.
        image_encoder ([`~transformers.Dinov2Model`]): DINOv2, the FLC's image tokens.
        scheduler ([`DDIMScheduler`]): the training noise schedule, which sampling uses too.
    """

    model_cpu_offload_seq = "image_encoder->feature_tokenizer->pose_encoder->unet->vae"
    # The CVA modules run inside the UNet's forward (hooks), never through their own.
    _exclude_from_cpu_offload = ["cross_view_attention"]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        pose_encoder: PoseEncoder,
        feature_tokenizer: FeatureTokenizer,
        cross_view_attention: CrossViewAttention,
        image_encoder: Dinov2Model,
        scheduler: DDIMScheduler,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, unet=unet, pose_encoder=pose_encoder, feature_tokenizer=feature_tokenizer,
            cross_view_attention=cross_view_attention, image_encoder=image_encoder, scheduler=scheduler,
        )
        self.denoiser = ImagPoseDenoiser(unet, pose_encoder, cross_view_attention)

    # -- conditions ---------------------------------------------------------------------------

    def _pixels(self, images: list[Image.Image], device: torch.device) -> torch.Tensor:
        array = np.stack([np.asarray(image.convert("RGB"), np.float32) / 255.0 for image in images])
        return torch.from_numpy(array).permute(0, 3, 1, 2).to(device, self.unet.dtype)

    def _encode(self, images: list[Image.Image], device: torch.device) -> torch.Tensor:
        latents = self.vae.encode(self._pixels(images, device) * 2 - 1).latent_dist.mode()
        return latents * self.vae.config.scaling_factor

    def context(
        self, sources: list[Image.Image], masked_latent: torch.Tensor, view_tiles: list[int], encoder_input: str = "padded"
    ) -> torch.Tensor:
        """FLC tokens of every source view: image-encoder tokens of the photo, then the latent
        patches of its tile in the masked canvas's latent."""
        pixels = [encoder_pixels(picture, encoder_input) for picture in sources]
        pixels = torch.from_numpy(np.stack(pixels)).to(masked_latent.device, self.unet.dtype)
        image_tokens = self.image_encoder(pixel_values=pixels).last_hidden_state[None]
        tile_latents = to_tiles(masked_latent)[:, view_tiles]
        return flc_context(self.feature_tokenizer, image_tokens, tile_latents)[0]

    def check_inputs(
        self, sources: list[Image.Image], source_poses: list[Image.Image], target_poses: list[Image.Image], mode: str,
        tile_long_side: int, encoder_input: str = "padded",
    ) -> joint.Layout:
        """The mode's layout for these counts; raises ValueError for inputs it cannot take."""
        if encoder_input not in ENCODER_INPUTS:
            raise ValueError(f"encoder_input {encoder_input!r}: choose from {', '.join(ENCODER_INPUTS)}")
        if len(source_poses) != len(sources):
            raise ValueError(f"{len(sources)} source photo(s) but {len(source_poses)} source pose(s)")
        try:
            joint.tile_size(*sources[0].size, tile_long_side) if sources else None
            return joint.layout(mode, len(sources), len(target_poses))
        except BadInputError as error:
            raise ValueError(str(error)) from None

    # -- the pass -----------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        sources: list[Image.Image],
        source_poses: list[Image.Image],
        target_poses: list[Image.Image],
        mode: str = "t1",
        num_inference_steps: int = ImagPoseSettings.steps,
        guidance_scale: float = ImagPoseSettings.guidance,
        tile_long_side: int = ImagPoseSettings.tile_long_side,
        generator: torch.Generator | None = None,
        callback_on_step_end: Callable[["ImagPosePipeline", int, torch.Tensor, dict], dict] | None = None,
        return_dict: bool = True,
        encoder_input: str = "padded",
    ) -> ImagPosePipelineOutput | tuple:
        r"""Fill the canvas of ``mode`` and return the generated targets.

        Args:
            sources (`list[PIL.Image.Image]`): photos of one person (one, or up to 3 views in `multi-source`).
            source_poses (`list[PIL.Image.Image]`): their pose maps, in the photos' frames.
            target_poses (`list[PIL.Image.Image]`): the target pose maps (one, or up to 3 in `multi-target`).
            mode (`str`, defaults to `"t1"`): `t1` [src, -, -, -], `t2` [src x3, -], `multi-target`, `multi-source`.
            num_inference_steps (`int`, defaults to 20): DDIM steps.
            guidance_scale (`float`, defaults to 2.0): classifier-free guidance on the FLC tokens; off at 1 or below.
            tile_long_side (`int`, defaults to 512): long side of a tile, a multiple of 64.
            generator (`torch.Generator`, *optional*): draws the initial noise (in float32, so a
                seed gives the same noise in every precision).
            callback_on_step_end (`Callable`, *optional*): called after every step as
                `callback(pipe, step, timestep, {"latents": latents})`; may return new latents.
            return_dict (`bool`, defaults to `True`): an [`ImagPosePipelineOutput`], else `(images, canvas)`.
            encoder_input (`str`, defaults to `"padded"`): how a photo becomes the image encoder's
                224x224 input (:func:`encoder_pixels`); the published sampler's was `"squashed"`.
        """
        # 1. Check inputs
        layout = self.check_inputs(sources, source_poses, target_poses, mode, tile_long_side, encoder_input)
        device = self._execution_device
        dtype = self.unet.dtype
        tile = joint.tile_size(*sources[0].size, tile_long_side)

        # 2. The tiles: given pictures where the mode puts sources, black where it generates
        fitted = [joint.fit(picture, tile) for picture in sources]
        pose_of = {f"source:{i}": p for i, p in enumerate(source_poses)} | {f"target:{j}": p for j, p in enumerate(target_poses)}
        fitted_poses = {name: joint.fit(pose, tile) for name, pose in pose_of.items()}
        black = Image.new("RGB", tile)
        image_tiles = [black if source is None else fitted[source][0] for source in layout.sources]
        pose_canvas = self._pixels([joint.join([fitted_poses[name][0] for name in layout.poses])], device)

        # 3. Image-level conditions: the masked canvas's latent and the flag map
        masked = self._encode([joint.join(image_tiles)], device)
        height, width = masked.shape[-2:]
        flags = torch.zeros(1, 1, height, width, device=device, dtype=dtype)
        for index, flag in enumerate(layout.flags):
            rows, columns = index // 2, index % 2
            flags[..., rows * height // 2 : (rows + 1) * height // 2, columns * width // 2 : (columns + 1) * width // 2] = flag

        # 4. Feature-level conditions and the pose; the unconditional branch has zero tokens
        context = self.context(sources, masked, [layout.sources.index(view) for view in range(len(sources))], encoder_input)
        guided = guidance_scale > 1.0
        contexts = torch.cat([torch.zeros_like(context), context]) if guided else context
        conditions = torch.cat([flags, masked], dim=1)
        pose_features = self.denoiser.encode_pose(pose_canvas)
        pose_features = torch.cat([pose_features] * 2) if guided else pose_features

        # 5. Prepare timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # 6. Prepare latent variables
        noise_device = generator.device if generator is not None else torch.device("cpu")
        latents = torch.randn(masked.shape, generator=generator, device=noise_device, dtype=torch.float32)
        latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma

        # 7. Denoise the whole canvas at once
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for step, timestep in enumerate(timesteps):
                sample = torch.cat([latents, conditions], dim=1)
                sample = torch.cat([sample] * 2) if guided else sample
                sample = self.scheduler.scale_model_input(sample, timestep)
                prediction = self.denoiser(sample, timestep, contexts, pose_features=pose_features)
                if guided:
                    unconditional, conditional = prediction.chunk(2)
                    prediction = unconditional + guidance_scale * (conditional - unconditional)
                latents = self.scheduler.step(prediction, timestep, latents).prev_sample
                if callback_on_step_end is not None:
                    latents = (callback_on_step_end(self, step, timestep, {"latents": latents}) or {}).get("latents", latents)
                progress_bar.update()

        # 8. Decode and cut the results back to their targets' frames
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        array = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        full = Image.fromarray(array)
        tiles = joint.split(full)
        images = []
        for index in layout.results:
            target = layout.poses[index]
            pose, frame = pose_of[target], fitted_poses[target][1]
            images.append(joint.unfit(tiles[index], frame, pose.size))
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, full
        return ImagPosePipelineOutput(images=images, canvas=full)
