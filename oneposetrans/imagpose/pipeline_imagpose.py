"""``ImagPosePipeline``: every IMAGPose scenario in one denoising pass over the joint canvas.

The components are a checkpoint folder's (:mod:`oneposetrans.imagpose.checkpoint`): the VAE, the
denoiser (9-channel UNet, pose encoder, cross-view attention), the FLC tokenizer, the image
encoder (DINOv2) and the DDIM scheduler. :meth:`__call__` reads top to bottom: lay the tiles out
for the mode, encode the given tiles and the reference tokens, denoise with classifier-free
guidance on the FLC tokens only (pose, flags and the masked latent stay in both branches, as in
the published sampler), decode, and cut each result tile back to its target's frame.

Fixed from the published sampler (README *IMAGPose*): the beta schedule is the training one
(scaled-linear, v-prediction, zero terminal SNR, trailing spacing; the published inference used
"linear"); the reference's VAE tokens come from its tile, as in training (the published
inference resized the reference to the whole canvas); the image encoder sees the reference
padded to a square, not centre-cropped (which cut heads and feet); every source view is
tokenised with its view embedding (the published code used the first source only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from oneposetrans.errors import BadInputError
from oneposetrans.imagpose import canvas as joint
from oneposetrans.imagpose.modules import to_tiles
from oneposetrans.progress import Progress
from oneposetrans.settings import ImagPoseSettings

# CLIP's normalisation, which the published FLC preprocessing applied before DINOv2.
IMAGE_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32).reshape(3, 1, 1)
IMAGE_STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32).reshape(3, 1, 1)
IMAGE_SIDE = 224


def encoder_pixels(picture: Image.Image) -> np.ndarray:
    """The image encoder's input (3, 224, 224): the photo padded to a square with black, resized,
    CLIP-normalised. Padding keeps the whole person (a centre crop cut heads and feet)."""
    side = max(picture.size)
    square = Image.new("RGB", (side, side))
    square.paste(picture.convert("RGB"), ((side - picture.width) // 2, (side - picture.height) // 2))
    pixels = np.asarray(square.resize((IMAGE_SIDE, IMAGE_SIDE), Image.BICUBIC), np.float32).transpose(2, 0, 1) / 255.0
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
class ImagPoseOutput:
    images: list[Image.Image]
    """The generated targets, each at its target pose's frame, in the order of the targets."""
    canvas: Image.Image
    """The whole decoded canvas, for inspection."""


class ImagPosePipeline:
    def __init__(self, vae, denoiser, tokenizer, image_encoder, scheduler):
        self.vae = vae
        self.denoiser = denoiser
        self.tokenizer = tokenizer
        self.image_encoder = image_encoder
        self.scheduler = scheduler
        parameter = next(denoiser.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype

    @classmethod
    def from_pretrained(cls, folder, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "ImagPosePipeline":
        from oneposetrans.imagpose.checkpoint import load_components

        components = load_components(folder)
        for name in ("vae", "denoiser", "tokenizer", "image_encoder"):
            components[name].to(device, dtype).eval()
        return cls(**components)

    # -- conditions ---------------------------------------------------------------------------

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        array = np.stack([np.asarray(image.convert("RGB"), np.float32) / 255.0 for image in images])
        return torch.from_numpy(array).permute(0, 3, 1, 2).to(self.device, self.dtype)

    def _encode(self, images: list[Image.Image]) -> torch.Tensor:
        latents = self.vae.encode(self._pixels(images) * 2 - 1).latent_dist.mode()
        return latents * self.vae.config.scaling_factor

    def context(self, sources: list[Image.Image], masked_latent: torch.Tensor, view_tiles: list[int]) -> torch.Tensor:
        """FLC tokens of every source view: image-encoder tokens of the photo, then the latent
        patches of its tile in the masked canvas's latent."""
        pixels = torch.from_numpy(np.stack([encoder_pixels(picture) for picture in sources])).to(self.device, self.dtype)
        image_tokens = self.image_encoder(pixel_values=pixels).last_hidden_state[None]
        tile_latents = to_tiles(masked_latent)[:, view_tiles]
        return flc_context(self.tokenizer, image_tokens, tile_latents)[0]

    # -- the pass -----------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        sources: list[Image.Image],
        source_poses: list[Image.Image],
        target_poses: list[Image.Image],
        mode: str = "t1",
        settings: ImagPoseSettings | None = None,
    ) -> ImagPoseOutput:
        settings = settings or ImagPoseSettings()
        layout = joint.layout(mode, len(sources), len(target_poses))
        if len(source_poses) != len(sources):
            raise BadInputError(f"{len(sources)} source photo(s) but {len(source_poses)} source pose(s)")
        tile = joint.tile_size(*sources[0].size, settings.tile_long_side)

        # 1. The tiles: given pictures where the mode puts sources, black where it generates.
        fitted = [joint.fit(picture, tile) for picture in sources]
        pose_of = {f"source:{i}": p for i, p in enumerate(source_poses)} | {f"target:{j}": p for j, p in enumerate(target_poses)}
        fitted_poses = {name: joint.fit(pose, tile) for name, pose in pose_of.items()}
        black = Image.new("RGB", tile)
        image_tiles = [black if source is None else fitted[source][0] for source in layout.sources]
        pose_canvas = self._pixels([joint.join([fitted_poses[name][0] for name in layout.poses])])

        # 2. Image-level conditions: the masked canvas's latent and the flag map.
        masked = self._encode([joint.join(image_tiles)])
        height, width = masked.shape[-2:]
        flags = torch.zeros(1, 1, height, width, device=self.device, dtype=self.dtype)
        for index, flag in enumerate(layout.flags):
            rows, columns = index // 2, index % 2
            flags[..., rows * height // 2 : (rows + 1) * height // 2, columns * width // 2 : (columns + 1) * width // 2] = flag

        # 3. Feature-level conditions; the unconditional branch has zero tokens.
        context = self.context(sources, masked, [layout.sources.index(view) for view in range(len(sources))])
        guided = settings.guidance > 1.0
        contexts = torch.cat([torch.zeros_like(context), context]) if guided else context
        conditions = torch.cat([flags, masked], dim=1)
        pose_features = self.denoiser.encode_pose(pose_canvas)
        pose_features = torch.cat([pose_features] * 2) if guided else pose_features

        # 4. Denoise the whole canvas at once.
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        latents = torch.randn(masked.shape, generator=generator).to(self.device, self.dtype) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(settings.steps, device=self.device)
        with Progress(len(self.scheduler.timesteps), f"imagpose {mode}") as bar:
            for timestep in self.scheduler.timesteps:
                sample = torch.cat([latents, conditions], dim=1)
                sample = torch.cat([sample] * 2) if guided else sample
                sample = self.scheduler.scale_model_input(sample, timestep)
                prediction = self.denoiser(sample, timestep, contexts, pose_features=pose_features)
                if guided:
                    unconditional, conditional = prediction.chunk(2)
                    prediction = unconditional + settings.guidance * (conditional - unconditional)
                latents = self.scheduler.step(prediction, timestep, latents).prev_sample
                bar.update()

        # 5. Decode and cut the results back to their targets' frames.
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        array = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        full = Image.fromarray(array)
        tiles = joint.split(full)
        images = []
        for index in layout.results:
            target = layout.poses[index]
            pose, frame = pose_of[target], fitted_poses[target][1]
            images.append(joint.unfit(tiles[index], frame, pose.size))
        return ImagPoseOutput(images, full)
