"""The IMAGPose checkpoint folder: what training writes and generation reads.

No IMAGPose weights were ever published, so the folder is this project's format: the
``save_pretrained`` folder of :class:`~oneposetrans.imagpose.pipeline_imagpose.ImagPosePipeline`,
one folder per component in its library's own layout::

    model_index.json       the components and their classes (diffusers' pipeline index)
    unet/                  diffusers UNet2DConditionModel, 9 input channels
    vae/                   diffusers AutoencoderKL (sd-vae-ft-mse for SD1.5)
    image_encoder/         transformers Dinov2Model (dinov2-base: 257 tokens of 768 at 224x224)
    scheduler/             diffusers DDIMScheduler: the training noise schedule, used for sampling too
    pose_encoder/          PoseEncoder
    feature_tokenizer/     FeatureTokenizer (the FLC tokens)
    cross_view_attention/  CrossViewAttention (AnimateDiff motion-module key names)

``ImagPosePipeline.from_pretrained(folder)`` loads it. :func:`initialise` builds an untrained
folder from the stock parts (SD1.5, the VAE, DINOv2, a motion module: AnimateDiff v2's, or
Moore-AnimateAnyone's in the reference profile); training
(:mod:`oneposetrans.imagpose.train`) starts from it and writes its checkpoints in the same format.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from oneposetrans import registry
from oneposetrans.errors import BadInputError, MissingModelError
from oneposetrans.imagpose.modules import CrossViewAttention, FeatureTokenizer, PoseEncoder, load_motion_modules
from oneposetrans.imagpose.pipeline_imagpose import ImagPosePipeline
from oneposetrans.imagpose.unet import widen_conv_in
from oneposetrans.profiles import DEFAULT, Profile
from oneposetrans.runtime import quiet_libraries

COMPONENTS = ("vae", "unet", "pose_encoder", "feature_tokenizer", "cross_view_attention", "image_encoder", "scheduler")
ADDED_MODULES = ("pose_encoder", "feature_tokenizer", "cross_view_attention")
"""The modules IMAGPose adds to SD1.5; the others come from the stock parts."""
INDEX = "model_index.json"


def training_scheduler(set_alpha_to_one: bool = False):
    """IMAGPose's noise schedule: 1000 scaled-linear betas from 0.00085 to 0.012, rescaled to zero
    terminal SNR, v-prediction, trailing timesteps (the published inference used "linear").
    ``set_alpha_to_one``: DDIM's last step lands on alpha 1 (the published scheduler left
    diffusers' default, True) or on the first timestep's alpha (SD1.5's config, False)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
        rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=set_alpha_to_one, steps_offset=1,
    )


def modules_config(
    unet, image_encoder, views: int = 3, pose_channels: tuple[int, ...] = (16, 32, 96, 256), heads: int = 8, groups: int = 32, patch: int = 16
) -> dict:
    """The added modules' settings for ``unet`` and ``image_encoder``, by component name."""
    return {
        "pose_encoder": {"out_channels": unet.config.block_out_channels[0], "channels": tuple(pose_channels)},
        "feature_tokenizer": {
            "width": unet.config.cross_attention_dim,
            "encoder_width": image_encoder.config.hidden_size,
            "latent_channels": 4,
            "patch": patch,
            "views": views,
        },
        "cross_view_attention": {
            "block_out_channels": tuple(unet.config.block_out_channels),
            "layers_per_block": unet.config.layers_per_block,
            "heads": heads,
            "groups": groups,
        },
    }


def build_modules(config: dict) -> dict:
    """The added modules, untrained, from :func:`modules_config`'s settings."""
    return {
        "pose_encoder": PoseEncoder(**config["pose_encoder"]),
        "feature_tokenizer": FeatureTokenizer(**config["feature_tokenizer"]),
        "cross_view_attention": CrossViewAttention(**config["cross_view_attention"]),
    }


def save_checkpoint(
    folder: str | os.PathLike,
    components: dict,
    *,
    copy_from: str | os.PathLike | None = None,
    copied: tuple[str, ...] = (),
    extra: Callable[[Path], object] | None = None,
) -> Path:
    """Write a checkpoint folder of ``components`` (the pipeline's, by name). It is written beside
    ``folder`` under a temporary name and then renamed into place, so a killed save never leaves
    a folder that looks complete.

    The components named in ``copied`` are taken from the checkpoint folder ``copy_from`` bit for
    bit (hard links where the file system allows) instead of from the modules: training holds
    its frozen parts in a lower precision. ``extra(partial_folder)`` writes further files first.
    """
    final = Path(folder)
    partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    ImagPosePipeline(**components).save_config(partial)
    for name in COMPONENTS:
        if name in copied:
            shutil.copytree(Path(copy_from) / name, partial / name, copy_function=_link_or_copy)
        else:
            components[name].save_pretrained(partial / name)
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


def check_folder(folder: str | os.PathLike) -> Path:
    """``folder`` if it holds an IMAGPose checkpoint; one line naming what it lacks otherwise."""
    folder = Path(folder)
    missing = [part for part in (INDEX, *COMPONENTS) if not (folder / part).exists()]
    if missing:
        raise MissingModelError(f"{folder}: not an IMAGPose checkpoint folder (missing {', '.join(missing)})")
    return folder


def load_pipeline(folder: str | os.PathLike, dtype=None) -> ImagPosePipeline:
    """The pipeline of a checkpoint folder, on the CPU (float32 unless ``dtype``)."""
    quiet_libraries()
    try:
        pipeline = ImagPosePipeline.from_pretrained(check_folder(folder), torch_dtype=dtype, local_files_only=True)
    except ValueError as error:  # e.g. a UNet without the 9-channel input
        raise BadInputError(f"{folder}: {error}") from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def stock_parts(profile: Profile = DEFAULT, image_encoder: str = "dinov2-base") -> list[str]:
    """The registry models :func:`initialise` reads under ``profile``."""
    if image_encoder not in registry.IMAGPOSE_IMAGE_ENCODERS:
        raise BadInputError(f"image encoder {image_encoder!r}: choose from {', '.join(registry.IMAGPOSE_IMAGE_ENCODERS)}")
    return ["sd15", "sd-vae-ft-mse", image_encoder, profile.imagpose_cva_init]


def initialise(
    models: str | os.PathLike, out: str | os.PathLike, profile: Profile = DEFAULT, echo=print, image_encoder: str = "dinov2-base"
) -> Path:
    """An untrained checkpoint folder from the stock parts in the models folder: SD1.5's UNet
    widened to 9 channels, sd-vae-ft-mse, a DINOv2 (its tokens projected to the UNet's width
    when they are wider, as DINOv2-G's 1536), and the CVA modules from a motion module (the
    loader's report of matched and unmatched keys is printed). The profile decides the widened
    ``conv_in``, the motion module and DDIM's last step (README, *Profiles*)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import Dinov2Model

    base, vae_dir, encoder_dir, motion_dir = (registry.require(name, models) for name in stock_parts(profile, image_encoder))
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    widen_conv_in(unet, fresh=profile.imagpose_conv_in == "fresh")
    image_encoder = Dinov2Model.from_pretrained(encoder_dir)
    added = build_modules(modules_config(unet, image_encoder))
    motion_file = sorted(p for p in Path(motion_dir).iterdir() if p.suffix in (".safetensors", ".ckpt", ".pth"))[0]
    matched, unmatched = load_motion_modules(added["cross_view_attention"], motion_file)
    missing = len(added["cross_view_attention"].state_dict()) - len(matched)
    echo(f"{motion_file.name}: {len(matched)} keys loaded into the CVA modules, {missing} of theirs not in the file, {len(unmatched)} of the file's not used")
    components = {
        "vae": AutoencoderKL.from_pretrained(vae_dir), "unet": unet, "image_encoder": image_encoder,
        "scheduler": training_scheduler(set_alpha_to_one=profile.imagpose_final_alpha == "one"), **added,
    }
    return save_checkpoint(out, components)
