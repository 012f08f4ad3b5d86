"""The IMAGPose checkpoint folder: what training writes and generation reads.

No IMAGPose weights were ever published, so the folder is this project's format, in the
libraries' own layouts::

    unet/                 diffusers UNet2DConditionModel, 9 input channels
    vae/                  diffusers AutoencoderKL (sd-vae-ft-mse for SD1.5)
    image_encoder/        transformers Dinov2Model (dinov2-base: 257 tokens of 768 at 224x224)
    scheduler/            diffusers DDIMScheduler: the training noise schedule, used for sampling too
    imagpose.json         the added modules' shapes
    imagpose.safetensors  their weights: pose_encoder.*, tokenizer.*, cva.* (AnimateDiff key names)

:func:`initialise` builds an untrained folder from the stock parts (SD1.5, the VAE, DINOv2, an
AnimateDiff-v2 motion module); training (:mod:`oneposetrans.imagpose.train`) starts from it and
writes its checkpoints in the same format.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from oneposetrans.errors import BadInputError, MissingModelError
from oneposetrans.imagpose.modules import CrossViewAttention, FeatureTokenizer, PoseEncoder, load_motion_modules
from oneposetrans.imagpose.unet import ImagPoseDenoiser, widen_conv_in

MODULES_CONFIG = "imagpose.json"
MODULES_WEIGHTS = "imagpose.safetensors"
PARTS = ("unet", "vae", "image_encoder", "scheduler", MODULES_CONFIG, MODULES_WEIGHTS)
ADDED_MODULES = ("pose_encoder", "tokenizer", "cva")


def training_scheduler():
    """IMAGPose's noise schedule: 1000 scaled-linear betas from 0.00085 to 0.012, rescaled to zero
    terminal SNR, v-prediction, trailing timesteps (the published inference used "linear")."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
        rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def modules_config(
    unet, image_encoder, views: int = 3, pose_channels: tuple[int, ...] = (16, 32, 96, 256), heads: int = 8, groups: int = 32, patch: int = 16
) -> dict:
    return {
        "pose_encoder": {"out_channels": unet.config.block_out_channels[0], "channels": list(pose_channels)},
        "tokenizer": {
            "width": unet.config.cross_attention_dim,
            "encoder_width": image_encoder.config.hidden_size,
            "latent_channels": 4,
            "patch": patch,
            "views": views,
        },
        "cva": {
            "block_out_channels": list(unet.config.block_out_channels),
            "layers_per_block": unet.config.layers_per_block,
            "heads": heads,
            "groups": groups,
        },
    }


def build_modules(config: dict) -> tuple[PoseEncoder, FeatureTokenizer, CrossViewAttention]:
    pose = config["pose_encoder"]
    cva = config["cva"]
    return (
        PoseEncoder(pose["out_channels"], tuple(pose["channels"])),
        FeatureTokenizer(**config["tokenizer"]),
        CrossViewAttention(tuple(cva["block_out_channels"]), cva["layers_per_block"], cva["heads"], cva["groups"]),
    )


def save_components(
    folder: str | os.PathLike,
    vae,
    denoiser: ImagPoseDenoiser,
    tokenizer: FeatureTokenizer,
    image_encoder,
    scheduler,
    config: dict,
    *,
    copy_from: str | os.PathLike | None = None,
    copied: tuple[str, ...] = (),
    extra: Callable[[Path], object] | None = None,
) -> Path:
    """Write a checkpoint folder. It is written beside ``folder`` under a temporary name and then
    renamed into place, so a killed save never leaves a folder that looks complete.

    The parts named in ``copied`` (``unet``, ``vae``, ``image_encoder``, ``pose_encoder``,
    ``tokenizer``, ``cva``) are taken from the checkpoint folder ``copy_from`` bit for bit
    (hard links where the file system allows) instead of from the modules: training holds its
    frozen parts in a lower precision. ``extra(partial_folder)`` writes further files first.
    """
    from safetensors.torch import load_file, save_file

    final = Path(folder)
    partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, model in (("unet", denoiser.unet), ("vae", vae), ("image_encoder", image_encoder)):
        if name in copied:
            shutil.copytree(Path(copy_from) / name, partial / name, copy_function=_link_or_copy)
        else:
            model.save_pretrained(partial / name)
    scheduler.save_pretrained(partial / "scheduler")
    kept = load_file(Path(copy_from) / MODULES_WEIGHTS) if set(copied) & set(ADDED_MODULES) else {}
    state = {}
    for name, module in zip(ADDED_MODULES, (denoiser.pose_encoder, tokenizer, denoiser.cva)):
        if name in copied:
            state |= {k: v for k, v in kept.items() if k.startswith(f"{name}.")}
        else:
            state |= {f"{name}.{k}": v.detach().float().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(partial / MODULES_WEIGHTS))
    (partial / MODULES_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if extra is not None:
        extra(partial)
    if final.exists():
        replaced = final.with_name(f".{final.name}.{os.getpid()}.old")
        os.replace(final, replaced)
        os.replace(partial, final)
        shutil.rmtree(replaced)
    else:
        os.replace(partial, final)
    return final


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def load_components(folder: str | os.PathLike) -> dict:
    """The pipeline's components from a checkpoint folder, on the CPU in float32."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import Dinov2Model

    from oneposetrans.runtime import quiet_libraries

    folder = Path(folder)
    missing = [part for part in PARTS if not (folder / part).exists()]
    if missing:
        raise MissingModelError(f"{folder}: not an IMAGPose checkpoint folder (missing {', '.join(missing)})")
    quiet_libraries()
    config = json.loads((folder / MODULES_CONFIG).read_text())
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    if unet.config.in_channels != 9:
        raise BadInputError(f"{folder / 'unet'}: {unet.config.in_channels} input channels; IMAGPose's UNet has 9")
    pose_encoder, tokenizer, cva = build_modules(config)
    state = load_file(folder / MODULES_WEIGHTS)
    for name, module in zip(ADDED_MODULES, (pose_encoder, tokenizer, cva)):
        prefix = f"{name}."
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=True)
    return {
        "vae": AutoencoderKL.from_pretrained(folder / "vae"),
        "denoiser": ImagPoseDenoiser(unet, pose_encoder, cva),
        "tokenizer": tokenizer,
        "image_encoder": Dinov2Model.from_pretrained(folder / "image_encoder"),
        "scheduler": DDIMScheduler.from_pretrained(folder / "scheduler"),
    }


def initialise(models: str | os.PathLike, out: str | os.PathLike, echo=print) -> Path:
    """An untrained checkpoint folder from the stock parts in the models folder: SD1.5's UNet
    widened to 9 channels, sd-vae-ft-mse, DINOv2, and the CVA modules from the AnimateDiff-v2
    motion module (the loader's report of matched and unmatched keys is printed)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import Dinov2Model

    from oneposetrans import registry

    base = registry.require("sd15", models)
    vae_dir = registry.require("sd-vae-ft-mse", models)
    encoder_dir = registry.require("dinov2-base", models)
    motion_dir = registry.require("animatediff-motion-v2", models)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    widen_conv_in(unet)
    image_encoder = Dinov2Model.from_pretrained(encoder_dir)
    config = modules_config(unet, image_encoder)
    pose_encoder, tokenizer, cva = build_modules(config)
    motion_file = sorted(p for p in Path(motion_dir).iterdir() if p.suffix in (".safetensors", ".ckpt", ".pth"))[0]
    matched, unmatched = load_motion_modules(cva, motion_file)
    echo(f"{motion_file.name}: {len(matched)} keys loaded into the CVA modules, {len(unmatched)} not used")
    denoiser = ImagPoseDenoiser(unet, pose_encoder, cva)
    return save_components(out, AutoencoderKL.from_pretrained(vae_dir), denoiser, tokenizer, image_encoder, training_scheduler(), config)
