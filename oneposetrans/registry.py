"""The model registry: every model the toolkit uses, where it lives under ``models/``, and
where it comes from.

Loading code resolves folders only through :func:`require`, which checks the files a
published checkpoint actually has and, when something is missing, raises a one-line
:class:`MissingModelError` that names the folder and the download command. Nothing here
touches the network; ``oneposetrans models download`` runs :func:`download` in a child
process that is the only place where downloads are allowed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from oneposetrans.errors import MissingModelError

DEFAULT_MODELS_DIR = os.environ.get("ONEPOSETRANS_MODELS", "models")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    folder: str
    required: tuple[str, ...]
    """Glob patterns relative to the folder; each must match at least one file."""
    stages: tuple[str, ...]
    licence: str
    hf_repo: str | None = None
    allow_patterns: tuple[str, ...] = ()
    url: str | None = None
    manual: str | None = None
    """How to get the model when there is no download the toolkit can perform itself."""
    optional: bool = False
    notes: str = ""

    @property
    def source(self) -> str:
        if self.hf_repo:
            return f"https://huggingface.co/{self.hf_repo}"
        return self.url or self.manual or ""


_DIFFUSERS_SDXL = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
    "text_encoder/config.json",
    "text_encoder/model*.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model*.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model*.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model*.safetensors",
)
_SDXL_ALLOW = ("*.json", "*.txt", "*.fp16.safetensors")

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="sdxl-base",
        title="RealVisXL V4.0 (SDXL), diffusers format",
        folder="RealVisXL_V4.0",
        required=_DIFFUSERS_SDXL,
        stages=("finetune", "repose", "refine"),
        licence="CreativeML Open RAIL++-M",
        hf_repo="SG161222/RealVisXL_V4.0",
        allow_patterns=_SDXL_ALLOW,
    ),
    ModelSpec(
        name="controlnet-openpose",
        title="OpenPose ControlNet for SDXL (xinsir)",
        folder="controlnet-openpose-sdxl-1.0",
        required=("config.json", "diffusion_pytorch_model*.safetensors"),
        stages=("repose",),
        licence="Apache-2.0",
        hf_repo="xinsir/controlnet-openpose-sdxl-1.0",
        allow_patterns=("config.json", "diffusion_pytorch_model.safetensors"),
    ),
    ModelSpec(
        name="ip-adapter",
        title="IP-Adapter SDXL ViT-H + CLIP ViT-H image encoder",
        folder="IP-Adapter",
        required=(
            "sdxl_models/ip-adapter_sdxl_vit-h.*",
            "models/image_encoder/config.json",
            "models/image_encoder/model.safetensors",
        ),
        stages=("repose", "refine"),
        licence="Apache-2.0",
        hf_repo="h94/IP-Adapter",
        allow_patterns=(
            "sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
            "models/image_encoder/config.json",
            "models/image_encoder/model.safetensors",
        ),
    ),
    ModelSpec(
        name="instantid",
        title="InstantID face adapter (ip-adapter.bin: face Resampler + face K/V)",
        folder="InstantID",
        required=("ip-adapter.bin",),
        stages=("repose",),
        licence="Apache-2.0 (face embeddings come from non-commercial antelopev2)",
        hf_repo="InstantX/InstantID",
        allow_patterns=("ip-adapter.bin",),
    ),
    ModelSpec(
        name="instantid-identitynet",
        title="InstantID IdentityNet ControlNet (optional second ControlNet)",
        folder="InstantID",
        required=("ControlNetModel/config.json", "ControlNetModel/diffusion_pytorch_model*.safetensors"),
        stages=("repose",),
        licence="Apache-2.0",
        hf_repo="InstantX/InstantID",
        allow_patterns=("ControlNetModel/*",),
        optional=True,
        notes="not used by the published method; enabled with --identitynet",
    ),
    ModelSpec(
        name="layerdiffuse",
        title="LayerDiffuse SDXL: attention offsets, transparent VAE encoder and decoder",
        folder="LayerDiffuse",
        required=(
            "ld_diffusers_sdxl_attn.safetensors",
            "ld_diffusers_sdxl_vae_transparent_decoder.safetensors",
            "ld_diffusers_sdxl_vae_transparent_encoder.safetensors",
        ),
        stages=("repose", "refine"),
        licence="Apache-2.0",
        hf_repo="lllyasviel/LayerDiffuse_Diffusers",
        allow_patterns=(
            "ld_diffusers_sdxl_attn.safetensors",
            "ld_diffusers_sdxl_vae_transparent_decoder.safetensors",
            "ld_diffusers_sdxl_vae_transparent_encoder.safetensors",
        ),
    ),
    ModelSpec(
        name="antelopev2",
        title="InsightFace antelopev2 (SCRFD detector, glintr100 ArcFace)",
        folder="antelopev2",
        required=(
            "scrfd_10g_bnkps.onnx",
            "glintr100.onnx",
            "1k3d68.onnx",
            "2d106det.onnx",
            "genderage.onnx",
        ),
        stages=("repose", "evaluate"),
        licence="non-commercial research only (InsightFace models)",
        url="https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip",
    ),
    ModelSpec(
        name="grounding-dino",
        title="GroundingDINO Swin-T (OGC), Hugging Face format",
        folder="grounding-dino-tiny",
        required=("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json"),
        stages=("segment",),
        licence="Apache-2.0",
        hf_repo="IDEA-Research/grounding-dino-tiny",
        allow_patterns=("*.json", "*.txt", "model.safetensors"),
    ),
    ModelSpec(
        name="sam",
        title="Segment Anything ViT-H, Hugging Face format",
        folder="sam-vit-huge",
        required=("config.json", "model.safetensors", "preprocessor_config.json"),
        stages=("segment",),
        licence="Apache-2.0",
        hf_repo="facebook/sam-vit-huge",
        allow_patterns=("*.json", "model.safetensors"),
    ),
    ModelSpec(
        name="lama",
        title="LaMa inpainting, fixed-size ONNX export (inputs image, mask)",
        folder="lama",
        required=("lama_fp32*.onnx",),
        stages=("inpaint",),
        licence="Apache-2.0",
        hf_repo="Carve/LaMa-ONNX",
        allow_patterns=("lama_fp32.onnx",),
        notes=(
            "any fixed size works in the default profile (read from the model); --profile reference needs the "
            "published 1024x1024 export as lama/lama_fp32_1024.onnx (the original's Baidu-pan file, or big-lama "
            "exported at 1024 with Carve-Photos/lama's export_LaMa_to_onnx notebook)"
        ),
    ),
    ModelSpec(
        name="sdxl-inpainting",
        title="SDXL inpainting 0.1 (alternative background inpainter)",
        folder="stable-diffusion-xl-1.0-inpainting-0.1",
        required=_DIFFUSERS_SDXL,
        stages=("inpaint",),
        licence="CreativeML Open RAIL++-M",
        hf_repo="diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
        allow_patterns=_SDXL_ALLOW,
        optional=True,
        notes="only for --inpainter diffusion",
    ),
    ModelSpec(
        name="caption-vlm",
        title="SmolVLM-256M-Instruct, offline captioner (any transformers image-text-to-text folder works)",
        folder="SmolVLM-256M-Instruct",
        required=("config.json", "model*.safetensors", "tokenizer*.json"),
        stages=("caption",),
        licence="Apache-2.0",
        hf_repo="HuggingFaceTB/SmolVLM-256M-Instruct",
        allow_patterns=("*.json", "*.jinja", "*.txt", "model.safetensors"),
        optional=True,
        notes="only for captioning without Gemini: caption --local-vlm",
    ),
    ModelSpec(
        name="openpose",
        title="OpenPose body and hand estimators (ControlNet annotators)",
        folder="Annotators",
        required=("body_pose_model.pth", "hand_pose_model.pth"),
        stages=("pose",),
        licence="non-commercial (CMU OpenPose)",
        hf_repo="lllyasviel/Annotators",
        allow_patterns=("body_pose_model.pth", "hand_pose_model.pth"),
        notes="only to extract a pose from a photo; keypoints JSON needs no model",
    ),
    ModelSpec(
        name="lpips-alex",
        title="AlexNet ImageNet weights, LPIPS backbone (the v0.1 linear layers ship with the lpips package)",
        folder="lpips",
        required=("alexnet-owt-7be5be79.pth",),
        stages=("evaluate",),
        licence="BSD-3-Clause (torchvision)",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    ),
    ModelSpec(
        name="fid-inception",
        title="Inception-v3 ImageNet weights (torchvision), FID in the pose-transfer community protocol",
        folder="fid-inception",
        required=("inception_v3_google-0cc3c7bd.pth",),
        stages=("evaluate",),
        licence="Apache-2.0 (TensorFlow weights) / BSD-3-Clause (torchvision)",
        url="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
    ),
    ModelSpec(
        name="fid-inception-tf",
        title="TF-ported FID Inception (pytorch-fid / torch-fidelity), FID in the standard protocol",
        folder="fid-inception-tf",
        required=("weights-inception-2015-12-05-6726825d.pth",),
        stages=("evaluate",),
        licence="Apache-2.0",
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    ),
)

_BY_NAME = {spec.name: spec for spec in MODELS}


def spec(name: str) -> ModelSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(_BY_NAME)}") from None


def download_command(name: str, models_dir: str | os.PathLike) -> str:
    return f"python -m oneposetrans models download {name} --models {models_dir}"


def missing_files(name: str, models_dir: str | os.PathLike) -> list[str]:
    """The required patterns of ``name`` that match no file under its folder."""
    folder = Path(models_dir) / spec(name).folder
    return [pattern for pattern in spec(name).required if not any(folder.glob(pattern))]


def require(name: str, models_dir: str | os.PathLike) -> Path:
    """The folder of model ``name``, after checking its files; a one-line error otherwise."""
    model = spec(name)
    folder = Path(models_dir) / model.folder
    missing = missing_files(name, models_dir)
    if missing:
        what = "folder is missing" if not folder.is_dir() else f"no {missing[0]}"
        how = model.manual or f"get it with: {download_command(name, models_dir)}"
        raise MissingModelError(f"missing model '{name}' ({model.title}) at {folder}: {what}; {how}")
    return folder


def weights_variant(pipeline_folder: str | os.PathLike) -> str | None:
    """``"fp16"`` when a diffusers folder ships only fp16 weight files (as RealVisXL may), else None."""
    unet = Path(pipeline_folder) / "unet"
    has_full = any(unet.glob("diffusion_pytorch_model.safetensors")) or any(
        unet.glob("diffusion_pytorch_model-*.safetensors")
    )
    return "fp16" if not has_full and any(unet.glob("*.fp16.safetensors")) else None


def models_for(stages: list[str] | None = None, include_optional: bool = False) -> list[ModelSpec]:
    return [
        model
        for model in MODELS
        if (include_optional or not model.optional) and (not stages or set(stages) & set(model.stages))
    ]


def check(models_dir: str | os.PathLike, stages: list[str] | None = None) -> tuple[str, bool]:
    """A present/missing report for every model and whether everything required is present."""
    lines, all_present = [], True
    for model in models_for(stages, include_optional=True):
        missing = missing_files(model.name, models_dir)
        if not missing:
            status = "present"
        else:
            all_present &= model.optional
            status = ("missing (optional)" if model.optional else "MISSING") + f": {missing[0]}"
        lines.append(f"{model.name:<22} {status}")
        lines.append(f"{'':<22} {Path(models_dir) / model.folder}  [stages: {', '.join(model.stages)}]")
        if missing:
            lines.append(f"{'':<22} {model.manual or download_command(model.name, models_dir)}")
    return "\n".join(lines), all_present


def markdown_table() -> str:
    """The README's models table, generated so that the two never disagree."""
    rows = [
        "| name | model | folder under `models/` | source | stages | licence |",
        "|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        title = model.title + (f" ({model.notes})" if model.notes else "")
        title += " *optional*" if model.optional else ""
        rows.append(
            f"| `{model.name}` | {title} | `{model.folder}/` | {model.source} | "
            f"{', '.join(model.stages)} | {model.licence} |"
        )
    return "\n".join(rows)


def _fetch_url(url: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        archive = Path(tmp) / Path(url).name
        with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
            shutil.copyfileobj(response, out)
        if archive.suffix != ".zip":
            os.replace(archive, folder / archive.name)
            return
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.infolist():
                name = Path(member.filename).name
                # The published antelopev2.zip nests its files one folder deep; flatten it.
                if member.is_dir() or not name or name.startswith("."):
                    continue
                with zipped.open(member) as source, open(folder / name, "wb") as out:
                    shutil.copyfileobj(source, out)


def download(names: list[str], models_dir: str | os.PathLike) -> int:
    """Fetch models into ``models_dir``. Only ever run with downloads allowed (see cli)."""
    from huggingface_hub import snapshot_download

    failures = 0
    for name in names or [model.name for model in models_for()]:
        model = spec(name)
        folder = Path(models_dir) / model.folder
        if not missing_files(name, models_dir):
            print(f"{name}: already present in {folder}")
            continue
        print(f"{name}: downloading from {model.source} into {folder}", flush=True)
        try:
            if model.hf_repo:
                snapshot_download(model.hf_repo, allow_patterns=list(model.allow_patterns), local_dir=folder)
            elif model.url:
                _fetch_url(model.url, folder)
            else:
                print(f"{name}: cannot be downloaded automatically: {model.manual}")
                failures += 1
                continue
        except Exception as error:  # network errors come in many types; report and go on
            print(f"{name}: download failed: {error}")
            failures += 1
            continue
        still = missing_files(name, models_dir)
        if still:
            print(f"{name}: downloaded, but {still[0]} is still missing in {folder}")
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="download models (run by `oneposetrans models download`)")
    parser.add_argument("names", nargs="*")
    parser.add_argument("--models", default=DEFAULT_MODELS_DIR)
    arguments = parser.parse_args()
    sys.exit(download(arguments.names, arguments.models))
