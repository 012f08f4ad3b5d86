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

from oneposetrans.errors import BadInputError, MissingModelError

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
    size_gb: float = 0.0
    """Download size of the files fetched, approximate (as the hosting pages list them)."""

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
        size_gb=6.9,
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
        size_gb=5.0,
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
        size_gb=3.2,
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
        size_gb=1.7,
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
        size_gb=2.5,
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
        size_gb=0.95,
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
        size_gb=0.36,
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
        size_gb=0.69,
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
        size_gb=2.6,
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
        size_gb=0.21,
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
        size_gb=6.9,
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
        size_gb=0.51,
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
        size_gb=0.36,
    ),
    ModelSpec(
        name="lpips-alex",
        title="AlexNet ImageNet weights, LPIPS backbone (the v0.1 linear layers ship with the lpips package)",
        folder="lpips",
        required=("alexnet-owt-7be5be79.pth",),
        stages=("evaluate",),
        licence="BSD-3-Clause (torchvision)",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        size_gb=0.24,
    ),
    ModelSpec(
        name="fid-inception",
        title="Inception-v3 ImageNet weights (torchvision), FID in the pose-transfer community protocol",
        folder="fid-inception",
        required=("inception_v3_google-0cc3c7bd.pth",),
        stages=("evaluate",),
        licence="Apache-2.0 (TensorFlow weights) / BSD-3-Clause (torchvision)",
        url="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
        size_gb=0.1,
    ),
    ModelSpec(
        name="fid-inception-tf",
        title="TF-ported FID Inception (pytorch-fid / torch-fidelity), FID in the standard protocol",
        folder="fid-inception-tf",
        required=("weights-inception-2015-12-05-6726825d.pth",),
        stages=("evaluate",),
        licence="Apache-2.0",
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        size_gb=0.09,
    ),
    # IMAGPose: the stock parts an untrained checkpoint is built from (`imagpose init`), and the
    # checkpoint itself, which nobody has published: it is the user's own, trained here.
    ModelSpec(
        name="sd15",
        title="Stable Diffusion v1.5 UNet, widened to IMAGPose's 9 input channels",
        folder="stable-diffusion-v1-5",
        required=("unet/config.json", "unet/diffusion_pytorch_model*.safetensors"),
        stages=("imagpose",),
        licence="CreativeML OpenRAIL-M",
        hf_repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
        allow_patterns=("unet/config.json", "unet/diffusion_pytorch_model.safetensors"),
        notes="only to build an IMAGPose checkpoint (imagpose init)",
        size_gb=3.44,
    ),
    ModelSpec(
        name="sd-vae-ft-mse",
        title="SD VAE fine-tuned with MSE, IMAGPose's VAE",
        folder="sd-vae-ft-mse",
        required=("config.json", "diffusion_pytorch_model*.safetensors"),
        stages=("imagpose",),
        licence="MIT",
        hf_repo="stabilityai/sd-vae-ft-mse",
        allow_patterns=("config.json", "diffusion_pytorch_model.safetensors"),
        notes="only to build an IMAGPose checkpoint (imagpose init)",
        size_gb=0.33,
    ),
    ModelSpec(
        name="dinov2-base",
        title="DINOv2 ViT-B/14, IMAGPose's image encoder (257 tokens of 768)",
        folder="dinov2-base",
        required=("config.json", "model.safetensors"),
        stages=("imagpose",),
        licence="Apache-2.0",
        hf_repo="facebook/dinov2-base",
        allow_patterns=("config.json", "preprocessor_config.json", "model.safetensors"),
        notes="only to build an IMAGPose checkpoint (imagpose init)",
        size_gb=0.35,
    ),
    ModelSpec(
        name="animatediff-motion-v2",
        title="AnimateDiff v2 motion module, initialises IMAGPose's cross-view attention",
        folder="animatediff-motion-v2",
        required=("mm_sd_v15_v2.ckpt",),
        stages=("imagpose",),
        licence="Apache-2.0",
        hf_repo="guoyww/animatediff",
        allow_patterns=("mm_sd_v15_v2.ckpt",),
        notes="only to build an IMAGPose checkpoint (imagpose init); read with torch.load(weights_only=True)",
        size_gb=1.82,
    ),
    ModelSpec(
        name="dinov2-giant",
        title="DINOv2 ViT-g/14, the IMAGPose paper's image encoder (257 tokens of 1536, projected to 768)",
        folder="dinov2-giant",
        required=("config.json", "model.safetensors"),
        stages=("imagpose",),
        licence="Apache-2.0",
        hf_repo="facebook/dinov2-giant",
        allow_patterns=("config.json", "preprocessor_config.json", "model.safetensors"),
        optional=True,
        notes="only for imagpose init --image-encoder dinov2-giant (the paper's Table 1 model; the published code used dinov2-base)",
        size_gb=4.55,
    ),
    ModelSpec(
        name="animateanyone-motion",
        title="Moore-AnimateAnyone's trained motion module, the published IMAGPose code's cross-view attention start",
        folder="animateanyone-motion",
        required=("motion_module.pth",),
        stages=("imagpose",),
        licence="Apache-2.0",
        hf_repo="patrolli/AnimateAnyone",
        allow_patterns=("motion_module.pth",),
        optional=True,
        notes="only for imagpose init --profile reference; AnimateDiff v2's key names; read with torch.load(weights_only=True)",
        # Not listed by its host: AnimateDiff v2's 453 M parameters in fp32, which it was trained from.
        size_gb=1.82,
    ),
    ModelSpec(
        name="imagpose",
        title="IMAGPose checkpoint folder (a diffusers pipeline folder: model_index.json, unet, vae, image_encoder, scheduler, pose_encoder, feature_tokenizer, cross_view_attention)",
        folder="imagpose",
        required=(
            "model_index.json", "unet/config.json", "vae/config.json", "image_encoder/config.json", "scheduler/scheduler_config.json",
            "pose_encoder/config.json", "feature_tokenizer/config.json", "cross_view_attention/config.json",
        ),
        stages=("imagpose",),
        licence="yours (the IMAGPose method: Apache-2.0 code)",
        manual="no IMAGPose weights were ever published: `imagpose init` builds an untrained folder from sd15, sd-vae-ft-mse, dinov2-base and animatediff-motion-v2, and `imagpose train` (three phases on DeepFashion) turns it into a model; any of its checkpoint-<step> folders is such a folder",
        optional=True,
        notes="imagpose generate or evaluate --checkpoint DIR",
        # Not a download: the folder's size in fp32, estimated from its parts (the CVA modules ~1.7 GB).
        size_gb=5.8,
    ),
)

_BY_NAME = {spec.name: spec for spec in MODELS}

TASK_STAGES: dict[str, tuple[str, ...]] = {
    "repose": ("segment", "finetune", "repose", "inpaint"),
    # A visitor's target pose may be a photo; WPose's targets are photos.
    "demo": ("segment", "finetune", "pose", "repose", "inpaint"),
    "run": ("segment", "finetune", "inpaint", "pose", "repose", "refine"),
    "evaluate": ("evaluate",),
    "imagpose-init": ("imagpose",),
}
"""The stages each command runs with its default flags: `models download --for TASK` fetches
their models (:func:`task_models`); the stages themselves say which models they need."""
IMAGPOSE_IMAGE_ENCODERS = ("dinov2-base", "dinov2-giant")
"""The image encoders ``imagpose init`` takes: the published code's, and the paper's Table 1 model's."""
STAGES = tuple(sorted({stage for model in MODELS for stage in model.stages}))
TARGETS = (*TASK_STAGES, *(stage for stage in STAGES if stage not in TASK_STAGES))
"""What `models check --for` and `models download --for` take: a command (its stages) or a stage."""


def stages_of(targets: list[str] | None) -> list[str] | None:
    """The stages of ``--for`` targets (commands and stages); None when none is named."""
    if not targets:
        return None
    unknown = [target for target in targets if target not in TARGETS]
    if unknown:
        raise BadInputError(f"--for {', '.join(unknown)}: choose from {', '.join(TARGETS)}")
    return [stage for target in targets for stage in TASK_STAGES.get(target, (target,))]


def spec(name: str) -> ModelSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(_BY_NAME)}") from None


def download_command(name: str | list[str], models_dir: str | os.PathLike) -> str:
    names = " ".join([name] if isinstance(name, str) else name)
    return f"python -m oneposetrans models download {names} --models {models_dir}"


def total_size(names: list[str]) -> str:
    return f"about {sum(spec(name).size_gb for name in names):.1f} GB"


TINY_KIT_MARKER = "TINY_KIT.txt"
"""The file the tiny kit's builder leaves in its models folder, so that what the models report
(face counts, scores) can say that it comes from random weights."""


def is_tiny_kit(models_dir: str | os.PathLike) -> bool:
    return (Path(models_dir) / TINY_KIT_MARKER).is_file()


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


def require_all(names: list[str], models_dir: str | os.PathLike) -> None:
    """Check every model a run will need before any work, and name all the missing ones in one
    line with their total size and one download command, so that one fix is enough."""
    wanted = set(names)
    # In the registry's order, whichever stage asked first.
    missing = [model.name for model in MODELS if model.name in wanted and missing_files(model.name, models_dir)]
    if len(missing) == 1:
        require(missing[0], models_dir)
    if missing:
        downloadable = [name for name in missing if not spec(name).manual]
        how = [f"get {'them' if len(downloadable) > 1 else 'it'} with: {download_command(downloadable, models_dir)}"] if downloadable else []
        how += [f"{name}: {spec(name).manual}" for name in missing if spec(name).manual]
        raise MissingModelError(
            f"{len(missing)} models missing in {models_dir} ({total_size(missing)}): {', '.join(missing)}; " + "; ".join(how)
        )


def weights_variant(pipeline_folder: str | os.PathLike) -> str | None:
    """``"fp16"`` when a diffusers folder ships only fp16 weight files (as RealVisXL may), else None."""
    unet = Path(pipeline_folder) / "unet"
    has_full = any(unet.glob("diffusion_pytorch_model.safetensors")) or any(
        unet.glob("diffusion_pytorch_model-*.safetensors")
    )
    return "fp16" if not has_full and any(unet.glob("*.fp16.safetensors")) else None


def stage_models(stage: str) -> list[str]:
    """The required models of ``stage`` (the registry's ``stages`` column), in the registry's order;
    optional ones are a stage's to add where an option asks for them."""
    return [model.name for model in models_for([stage])]


def task_models(*targets: str) -> list[str]:
    """The models the ``--for`` targets need: a command's with its default flags (those of its
    stages), or a stage's."""
    return [model.name for model in models_for(stages_of(list(targets)))]


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
        "| name | model | folder under `models/` | download (approx.) | source | stages | licence |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        title = model.title + (f" ({model.notes})" if model.notes else "")
        title += " *optional*" if model.optional else ""
        rows.append(
            f"| `{model.name}` | {title} | `{model.folder}/` | {model.size_gb:.2f} GB | {model.source} | "
            f"{', '.join(model.stages)} | {model.licence} |"
        )
    return "\n".join(rows)


def _fetch_url(url: str, folder: Path) -> None:
    """Fetch ``url`` into ``folder``, resuming a ``.part`` file left by an interrupted run."""
    folder.mkdir(parents=True, exist_ok=True)
    name = Path(url).name
    part = folder / f".{name}.part"
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        # A server that ignores the range sends the whole file again: start over.
        resumed = start and response.status == 206
        with open(part, "ab" if resumed else "wb") as out:
            shutil.copyfileobj(response, out)
    if not name.endswith(".zip"):
        os.replace(part, folder / name)
        return
    with zipfile.ZipFile(part) as zipped:
        for member in zipped.infolist():
            member_name = Path(member.filename).name
            # The published antelopev2.zip nests its files one folder deep; flatten it.
            if member.is_dir() or not member_name or member_name.startswith("."):
                continue
            with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{member_name}.", delete=False) as out:
                with zipped.open(member) as source:
                    shutil.copyfileobj(source, out)
            os.replace(out.name, folder / member_name)
    part.unlink()


def _holds_downloaded_bytes(folder: Path) -> bool:
    """Whether a failed download left anything worth resuming (not just hub metadata and locks)."""
    return any(
        path.is_file() and path.stat().st_size > 0 and path.name != ".gitignore" and not path.name.endswith(".lock")
        for path in folder.rglob("*")
    )


def size_table(names: list[str], models_dir: str | os.PathLike) -> tuple[str, list[str]]:
    """One line per model (size, present or to download, folder) and the names to download."""
    lines, todo = [], []
    for name in names:
        model = spec(name)
        present = not missing_files(name, models_dir)
        if not present:
            todo.append(name)
        status = "present" if present else "to download"
        lines.append(f"{name:<22} {model.size_gb:>6.2f} GB  {status:<12} {Path(models_dir) / model.folder}")
    lines.append(f"{len(todo)} of {len(names)} to download, {total_size(todo)} (sizes approximate)")
    return "\n".join(lines), todo


def download(names: list[str], models_dir: str | os.PathLike, dry_run: bool = False) -> int:
    """Fetch the missing ones of ``names`` into ``models_dir``, after a size table.

    Only ever run with downloads allowed (see cli). Each failure is one line; a summary ends
    the run. A model folder that this run created and left without a downloaded byte is
    removed; partial files stay, and the next run resumes them.
    """
    table, todo = size_table(names, models_dir)
    print(table, flush=True)
    if dry_run or not todo:
        return 0
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import logging as hub_logging

    # The hub's own warnings repeat the same advice once per file; the one line below suffices.
    hub_logging.set_verbosity_error()
    root_existed = Path(models_dir).exists()
    failed: list[str] = []
    for name in todo:
        model = spec(name)
        folder = Path(models_dir) / model.folder
        existed = folder.exists()
        print(f"{name}: downloading {model.size_gb:.2f} GB from {model.source} into {folder}", flush=True)
        try:
            if model.hf_repo:
                snapshot_download(model.hf_repo, allow_patterns=list(model.allow_patterns), local_dir=folder)
            elif model.url:
                _fetch_url(model.url, folder)
            else:
                raise RuntimeError(f"cannot be downloaded automatically: {model.manual}")
            still = missing_files(name, models_dir)
            if still:
                raise RuntimeError(f"downloaded, but {still[0]} is still missing in {folder}")
        except Exception as error:  # network errors come in many types; report and go on
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            print(f"{name}: download failed: {type(error).__name__}: {reason}", flush=True)
            failed.append(name)
            if not existed and folder.exists() and not _holds_downloaded_bytes(folder):
                shutil.rmtree(folder, ignore_errors=True)
    if not root_existed and Path(models_dir).is_dir() and not any(Path(models_dir).iterdir()):
        Path(models_dir).rmdir()
    done = len(todo) - len(failed)
    summary = f"downloaded {done} of {len(todo)} models"
    if failed:
        summary += (
            f"; {len(failed)} failed ({', '.join(failed)}). Is there a network? Run the same command again to "
            "retry; partial downloads are resumed"
        )
    print(summary, flush=True)
    return 1 if failed else 0


def selected(names: list[str], targets: list[str] | None) -> list[str]:
    """The models named, else the ones the ``--for`` targets need (``repose`` by default)."""
    unknown = [name for name in names if name not in _BY_NAME]
    if unknown:
        raise BadInputError(f"unknown model {', '.join(unknown)}; known: {', '.join(_BY_NAME)}")
    return list(names) or task_models(*(targets or ["repose"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="download models (run by `oneposetrans models download`)")
    parser.add_argument("names", nargs="*")
    parser.add_argument("--models", default=DEFAULT_MODELS_DIR)
    parser.add_argument("--for", dest="targets", action="append", choices=TARGETS)
    arguments = parser.parse_args()
    sys.exit(download(selected(arguments.names, arguments.targets), arguments.models))
