"""The published defaults of every stage, in one place and as plain data.

The stages, the CLI (its flag defaults and ``--help``) and the demo all read these classes, so
a default is written once. Nothing here imports torch: ``--help`` and the input checks that
run before any model loads stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NEGATIVE_PROMPT = "low quality, bad quality"
"""The negative prompt of every published sampling call (generation and refining)."""

PAIR_METRICS = ("ssim", "ssim_256", "ssim_pcdms", "psnr", "lpips", "lpips_pcdms", "masked_ssim", "masked_psnr", "masked_lpips", "face_source", "face_target")
SET_METRICS = ("fid", "fid_standard")
ALL_METRICS = PAIR_METRICS + SET_METRICS
"""What ``evaluate --metrics`` accepts: per-pair scores, then scores of the whole set."""

STYLE_BLOCK = "up_blocks.0.attentions.1"
"""The UNet block where the LoRA and the image prompt act at full strength (InstantStyle's layout)."""


def style_block_lora_scales(elsewhere: float) -> dict:
    """LoRA strength per attention block: 1.0 where the style lives (up_blocks.0.attentions.1),
    ``elsewhere`` in every other attention block (diffusers' block-wise ``set_adapters`` layout)."""
    return {
        "down": {"block_1": [elsewhere] * 2, "block_2": [elsewhere] * 2},
        "mid": elsewhere,
        "up": {"block_0": [elsewhere, 1.0, elsewhere], "block_1": [elsewhere] * 3},
    }


def published_lora_scales() -> dict:
    """The main stage's "weight injection": 0.2 outside the style block."""
    return style_block_lora_scales(0.2)


def published_ip_scales() -> dict[str, float]:
    """Image-prompt scale per attention block; every other cross-attention layer gets 0."""
    return {STYLE_BLOCK: 1.0, "up_blocks.0.attentions.0": 0.4}


@dataclass
class GenerationSettings:
    """The main stage as published: Euler, 25 steps, CFG 5.0, seed 97 for every target, the
    OpenPose ControlNet at 1.0 over all steps (oneposetrans_deepfashion.py, oneposetrans_wpose.py)."""

    steps: int = 25
    guidance: float = 5.0
    seed: int = 97
    controlnet_scale: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    negative_prompt: str = NEGATIVE_PROMPT
    resolution: int = 1024
    lora_scales: dict | float = field(default_factory=published_lora_scales)
    ip_scales: dict[str, float] = field(default_factory=published_ip_scales)
    face_scale: float = 0.0
    use_image_prompt: bool = True
    use_face: bool = True
    transparent: bool = True
    identitynet_scale: float = 0.8
    """Used only when the Generator is built with ``identitynet=True`` (not part of the method)."""
    batch_size: int = 4
    """Target poses sampled together in one UNet batch (same pose size only)."""


@dataclass
class FinetuneSettings:
    """Published defaults (lora_deepfashion.py / lora_wpose.py)."""

    rank: int = 32
    alpha: int = 32
    target_modules: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
    steps: int = 60
    batch_size: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    resolution: int = 512
    seed: int = 0
    mixed_precision: str = "auto"
    masked_loss: bool = False
    cuda_graph: bool = True
    """On a GPU, the fast step (default profile, bf16 or fp32) runs as replays of one captured
    CUDA graph; False runs the same step eagerly."""


@dataclass
class RefineSettings:
    """The published refining stage (refining_stage_*.py): DPM++ 2M Karras img2img."""

    steps: int = 25
    strength: float = 0.65
    guidance: float = 7.0
    seed: int = 12345
    negative_prompt: str = NEGATIVE_PROMPT
    resolution: int = 1024
    """The published stage stretched init and reference images to 1024x1024; the default keeps the
    result's own frame (its shorter side at ``resolution``, sides multiples of 64)."""

    @property
    def schedule_length(self) -> int:
        """``int(25 / 0.65) = 38``: the published Karras schedule, of which the last 25 steps run."""
        return int(self.steps / self.strength)


@dataclass
class ImagPoseSettings:
    """IMAGPose's sampler as the paper gives it: DDIM, 20 steps, guidance 2.0 on the FLC tokens
    (the published script used 30 steps), seed 42 (the published script's); tiles of 512 on the
    long side."""

    steps: int = 20
    guidance: float = 2.0
    seed: int = 42
    tile_long_side: int = 512
