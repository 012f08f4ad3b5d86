"""Step 5 of the recipe, generate: the person of each source photo in its target poses
(``reposed_result/<source>_to_<target>.png``), the ``generate`` command and the ``run`` step.

:class:`Generator` holds :class:`StableDiffusionXLOnePoseTransPipeline` with every model of the
method loaded once: SDXL with the LayerDiffuse attention offsets, the OpenPose ControlNet, the
Visual Consistency Module (IP-Adapter image prompt, InstantID face), the transparent decoder and
the antelopev2 face models. Per identity it loads the LoRA with its block scales and encodes the
prompt, image prompt and face once; the target poses are then sampled in batches with the
published settings (Euler, 25 steps, CFG 5.0, seed 97 for every target, ControlNet 1.0 over all
steps, negative prompt "low quality, bad quality").

:class:`GenerateStage` runs it over cases that group a source with all its targets, so a source's
LoRA, caption, image prompt and face are prepared once, whichever process holds it (the published
scripts reloaded every model for every pair). The dataset adapter (:func:`pose_source`) is the only
difference between DeepFashion (target poses drawn from the keypoint CSV) and WPose (detected in the
target photos).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from diffusers import ControlNetModel
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image

from oneposetrans import registry
from oneposetrans.caption import CaptionStore
from oneposetrans.datasets import DATASETS, read_captions, read_keypoints_csv, read_pairs
from oneposetrans.errors import BadInputError
from oneposetrans.face import PUBLISHED_SIDE, FaceEmbedder, draw_face_keypoints
from oneposetrans.image_io import load_image, save_image
from oneposetrans.pipeline_stable_diffusion_xl_oneposetrans import StableDiffusionXLOnePoseTransPipeline
from oneposetrans.pose import PoseMaps, pose_from_photo, render_deepfashion_pose
from oneposetrans.profiles import DEFAULT, Profile
from oneposetrans.progress import Progress
from oneposetrans.results import ResultsTree, StageLog, is_done, pair_name, stem
from oneposetrans.runtime import quiet_libraries, resolve_device, resolve_dtype
from oneposetrans.settings import GenerationSettings
from oneposetrans.stages import Done, Stage


def identity_image(photo: Image.Image, profile: Profile) -> Image.Image:
    """What the image prompt (CLIP ViT-H) and the face detector see: the segmented person on black.

    ``photo`` is the source as RGBA with the person mask as alpha (``images_rgba``). The published
    generator opened that file and resized it to 1024x1024; Pillow resizes RGBA in premultiplied
    form, so every pixel of alpha 0 comes back black, and ``convert("RGB")`` then kept the person
    on black, stretched to a square (``identity_image == "stretch"``, reference). ``"pad"``
    (default) keeps the person's aspect ratio and pads the picture to a square with black, so that CLIP's centre crop cuts neither head nor
    feet. An opaque photo (no mask) passes through the same steps unchanged in content.
    """
    rgba = photo.convert("RGBA")
    if profile.identity_image == "stretch":
        return rgba.resize((PUBLISHED_SIDE, PUBLISHED_SIDE)).convert("RGB")
    person = Image.composite(rgba.convert("RGB"), Image.new("RGB", rgba.size), rgba.getchannel("A"))
    side = max(person.size)
    square = Image.new("RGB", (side, side))
    square.paste(person, ((side - person.width) // 2, (side - person.height) // 2))
    return square


def load_identity_image(tree: ResultsTree, name: str, profile: Profile, required: bool = False) -> tuple[Image.Image, str | None]:
    """:func:`identity_image` of ``images_rgba/<name>.png`` and None; without that file, the whole
    photo ``images/<name>.png`` and a note saying so (or BadInputError when ``required``)."""
    rgba_file = tree.file("images_rgba", f"{name}.png")
    if is_done(rgba_file):
        return identity_image(load_image(rgba_file, "RGBA"), profile), None
    if required:
        raise BadInputError(
            f"{name}: no person mask {rgba_file}: the image prompt and the face read the person on black "
            "(run segment --mode dataset first)"
        )
    photo = load_image(tree.file("images", f"{name}.png"), "RGBA")
    return identity_image(photo, profile), "no person mask of the source: the image prompt and face saw the whole photo"


def generator_models(session) -> list[str]:
    """What the session's :class:`Generator` loads: the generation models, and IdentityNet when asked for."""
    return [*registry.stage_models("repose"), *["instantid-identitynet"] * session.identitynet]


def check_compilable(profile: Profile) -> None:
    """``--compile`` needs the merged LoRA (a compiled block would see peft's adapters unfused)."""
    if not profile.fuse_lora:
        raise BadInputError(f"--compile: the {profile.name} profile runs the published computation, uncompiled; use the default profile")


class Generator:
    """Holds the generation models; load once, then call :meth:`generate` for every identity."""

    def __init__(
        self,
        models_dir: str | os.PathLike,
        device: str = "auto",
        dtype: str = "auto",
        profile: Profile = DEFAULT,
        identitynet: bool = False,
        compile: bool = False,
    ):
        """``compile``: the UNet's and ControlNet's repeated blocks through ``torch.compile``
        (:meth:`~StableDiffusionXLOnePoseTransPipeline.compile_blocks`); the first
        call of each size and batch pays the compilation, identities after it reuse it."""
        if compile:
            check_compilable(profile)
        quiet_libraries()
        folders = {name: registry.require(name, models_dir) for name in registry.stage_models("repose")}
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.profile = profile
        controlnet = ControlNetModel.from_pretrained(folders["controlnet-openpose"], dtype=self.dtype, local_files_only=True)
        self.identitynet = identitynet
        if identitynet:
            # Off in the method; InstantID's IdentityNet on the face landmarks as a second ControlNet.
            identity_folder = registry.require("instantid-identitynet", models_dir) / "ControlNetModel"
            second = ControlNetModel.from_pretrained(identity_folder, dtype=self.dtype, local_files_only=True)
            controlnet = MultiControlNetModel([controlnet, second])
        base = folders["sdxl-base"]
        self.pipe = StableDiffusionXLOnePoseTransPipeline.from_pretrained(
            base,
            controlnet=controlnet,
            dtype=self.dtype,
            variant=registry.weights_variant(base),
            local_files_only=True,
            add_watermarker=False,
            profile=profile,
        ).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        ip_adapter = next(iter(sorted((folders["ip-adapter"] / "sdxl_models").glob("ip-adapter_sdxl_vit-h.*"))))
        try:
            # The offsets are merged before any adapter or LoRA, as published.
            self.pipe.load_layerdiffuse(folders["layerdiffuse"])
            self.pipe.load_vcm(
                ip_adapter,
                folders["ip-adapter"] / "models" / "image_encoder",
                folders["instantid"] / "ip-adapter.bin",
            )
        except ValueError as error:  # a file that is not what its name says
            raise BadInputError(str(error)) from None
        self.faces = FaceEmbedder(models_dir, str(self.device), profile)
        self.compiled_blocks = self.pipe.compile_blocks() if compile else []
        self.conditioning = ""
        """What the last :meth:`generate` call conditioned on, in words."""

    @torch.no_grad()
    def generate(
        self,
        caption: str,
        pose_maps: list[Image.Image],
        settings: GenerationSettings,
        lora: str | os.PathLike | None = None,
        source: Image.Image | None = None,
        on_batch: Callable[[int, list[Image.Image]], None] | None = None,
    ) -> tuple[list[Image.Image], list[str]]:
        """One image per pose map (RGBA when ``settings.transparent``) and notes on what the
        identity lacked. Prompt, image prompt, face and LoRA are prepared once for all targets;
        every target starts from the same seed, as each published case did. ``source`` is what the
        image prompt and the face detector read (:func:`identity_image`). ``on_batch(first,
        images)`` is called as each batch finishes, so that callers can save early."""
        self.pipe.set_ip_adapter_scale(settings.ip_scales if settings.use_image_prompt else {}, settings.face_scale)
        if lora is not None:
            # The published pipeline ran the adapters unfused; merging them is the same sum, once.
            self.pipe.load_subject_lora(Path(lora), settings.lora_scales, fuse=self.profile.fuse_lora)
        try:
            return self._generate(caption, pose_maps, settings, lora is not None, source, on_batch)
        except ValueError as error:  # the pipeline's check of its inputs
            raise BadInputError(str(error)) from None
        finally:
            if lora is not None:
                self.pipe.unload_subject_lora()

    def _generate(
        self, caption: str, pose_maps: list[Image.Image], settings: GenerationSettings, lora: bool,
        source: Image.Image | None, on_batch: Callable[[int, list[Image.Image]], None] | None,
    ) -> tuple[list[Image.Image], list[str]]:
        notes: list[str] = []
        reference = source.convert("RGB") if source is not None else None
        face_embedding = keypoints_image = None
        if (settings.use_face or self.identitynet) and reference is not None:
            found = self.faces.embed(reference)
            face_embedding = found.embedding if settings.use_face else None
            notes.append(found.note)
            if self.identitynet:
                if found.keypoints is None:
                    raise BadInputError("--identitynet needs a face in the source photo; none was found")
                keypoints_image = draw_face_keypoints(found.keypoints, pose_maps[0].size)
        identity = self.pipe.encode_identity(
            caption,
            settings.negative_prompt,
            reference if settings.use_image_prompt else None,
            face_embedding,
            do_classifier_free_guidance=settings.guidance > 1.0,
        )
        notes += identity.notes
        self.conditioning = _describe_conditioning(identity, settings, lora, keypoints_image is not None)
        images: list[Image.Image] = []
        # Published: one target per pipeline call (batching changes the kernels, hence the bits).
        batch_size = settings.batch_size if self.profile.batch_poses else 1
        # Poses of different sizes cannot share a UNet batch; split where the size changes.
        groups = [
            group
            for first in range(0, len(pose_maps), batch_size)
            for group in _same_size_runs(pose_maps[first : first + batch_size])
        ]
        with Progress(len(groups) * settings.steps, f"denoise {len(pose_maps)} target(s)") as bar:
            for group in groups:
                output = self.pipe(
                    image=group,
                    identity=identity,
                    face_keypoints_image=keypoints_image,
                    identitynet_conditioning_scale=settings.identitynet_scale,
                    num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance,
                    controlnet_conditioning_scale=settings.controlnet_scale,
                    control_guidance_start=settings.control_start,
                    control_guidance_end=settings.control_end,
                    generator=[torch.Generator(self.device).manual_seed(settings.seed) for _ in group],
                    transparent=settings.transparent,
                    batch_size=len(group),
                    callback_on_step_end=bar.step_callback(),
                )
                if on_batch is not None:
                    on_batch(len(images), output.images)
                images += output.images
        return images, notes


def _describe_conditioning(identity, settings: GenerationSettings, lora: bool, identitynet: bool) -> str:
    """What a generate call conditioned on, in words, for the run's report."""
    tokens = ["text"] + ["IP-Adapter image"] * identity.has_image + ["InstantID face"] * identity.has_face
    parts = [f"VCM ({', '.join(tokens)})", "OpenPose ControlNet"]
    parts += ["IdentityNet"] * identitynet + ["LoRA"] * lora
    parts.append("LayerDiffuse alpha" if settings.transparent else "SDXL VAE (opaque)")
    return " + ".join(parts)


def _same_size_runs(images: list[Image.Image]) -> list[list[Image.Image]]:
    runs: list[list[Image.Image]] = []
    for image in images:
        if runs and runs[-1][0].size == image.size:
            runs[-1].append(image)
        else:
            runs.append([image])
    return runs


@dataclass
class GenerateCase:
    """One source and its target poses: its LoRA, caption, image prompt and face are prepared
    once, and the poses are sampled in batches."""

    source: str
    targets: list[str]
    caption: str | None


def group_by_source(pairs: list[tuple[str, str]], captions: dict[str, str]) -> list[GenerateCase]:
    """``(source, target)`` pairs as one case per source, in first-seen order, each target once."""
    cases: dict[str, GenerateCase] = {}
    for source, target in pairs:
        source, target = stem(source), stem(target)
        case = cases.setdefault(source, GenerateCase(source, [], captions.get(source)))
        if target not in case.targets:
            case.targets.append(target)
    return list(cases.values())


class GenerateStage(Stage[GenerateCase]):
    """Render every target pose of each source into ``reposed_result/<source>_to_<target>.png``.

    ``pose_of(target)`` gives a target's ControlNet map (the flow's pose source, through
    :class:`~oneposetrans.pose.PoseMaps`); a target whose pose cannot be had fails alone;
    ``detects_poses`` says that it runs the pose detector (WPose's target photos). Each batch is
    written as soon as it exists, so a killed run keeps it. With ``require_mask`` (the reference
    profile of dataset runs) a source without its person mask fails; otherwise the whole photo
    serves the image prompt and the face, with a note.
    """

    name = "generate"
    unit = "source"

    def __init__(
        self,
        tree: ResultsTree,
        settings: GenerationSettings,
        pose_of: Callable[[str], Image.Image],
        require_mask: bool = False,
        overwrite: bool = False,
        echo: Callable[[str], None] = print,
        detects_poses: bool = False,
    ):
        self.tree = tree
        self.settings = settings
        self.pose_of = pose_of
        self.require_mask = require_mask
        self.overwrite = overwrite
        self.echo = echo
        self.detects_poses = detects_poses

    def models(self, session) -> list[str]:
        return [*generator_models(session), *["openpose"] * self.detects_poses]

    def case_name(self, case: GenerateCase) -> str:
        return case.source

    def result(self, source: str, target: str) -> Path:
        return self.tree.file("reposed_result", pair_name(source, target))

    def outputs(self, case: GenerateCase) -> list[Path]:
        return [self.result(case.source, target) for target in case.targets]

    def skip(self, case: GenerateCase, log: StageLog) -> None:
        for target in case.targets:
            log.skip(pair_name(case.source, target))

    def _todo(self, case: GenerateCase) -> list[str]:
        return [t for t in case.targets if self.overwrite or not is_done(self.result(case.source, t))]

    def fail(self, case: GenerateCase, log: StageLog, reason: str) -> None:
        for target in self._todo(case):
            log.fail(pair_name(case.source, target), reason)

    def run(self, case: GenerateCase, session, log: StageLog) -> Done | None:
        todo = self._todo(case)
        for target in case.targets:
            if target not in todo:
                log.skip(pair_name(case.source, target))
        if not case.caption:
            raise BadInputError(f"{case.source}: no caption (run caption, or pass --captions)")
        lora = self.tree.file("lora", f"{case.source}.safetensors")
        if not is_done(lora):
            raise BadInputError(f"{case.source}: no LoRA {lora} (run finetune first)")
        source, missing_mask = load_identity_image(self.tree, case.source, session.profile, required=self.require_mask)
        maps, names = [], []
        for target in todo:
            try:
                maps.append(self.pose_of(target))
                names.append(pair_name(case.source, target))
            except BadInputError as error:
                log.fail(pair_name(case.source, target), str(error))
                self.echo(f"{session.prefix}failed: {error}")
        if not maps:
            return None
        generator = session.generator
        started = time.perf_counter()

        def save_batch(first: int, images: list[Image.Image]) -> None:
            seconds = (time.perf_counter() - started) / (first + len(images))
            for name, image in zip(names[first : first + len(images)], images):
                save_image(image, self.tree.file("reposed_result", name))
                log.ok(name, seconds_per_target=round(seconds, 3), size=list(image.size), mode=image.mode, process=session.process_index)

        _, notes = generator.generate(case.caption, maps, self.settings, lora=lora, source=source, on_batch=save_batch)
        notes = [missing_mask, *notes] if missing_mask else notes
        note = f"; {'; '.join(notes)}" if notes else ""
        line = f"{case.source}: {len(maps)} targets in {time.perf_counter() - started:.1f} s{note}"
        return Done(line, notes, generator.conditioning)


@dataclass
class GenerateInputs:
    """What a dataset run reads besides the results tree."""

    dataset: str
    pairs: list[tuple[str, str]]
    captions: dict[str, str]
    keypoints: dict | None = None
    """DeepFashion target keypoints by image stem (from the annotation CSV); WPose reads target
    photos from the results tree's ``images`` folder, beside the sources."""


def pose_source(inputs: GenerateInputs, tree: ResultsTree, resolution: int, session) -> Callable[[str], Image.Image]:
    """The dataset adapter: a target's ControlNet map, rendered once per profile into ``poses/``."""
    maps = PoseMaps(tree, session.profile)

    def deepfashion(target: str) -> tuple[Image.Image, None]:
        if inputs.keypoints is None or target not in inputs.keypoints:
            raise BadInputError(f"{target}: no keypoints for this target in the annotation CSV")
        return render_deepfashion_pose(inputs.keypoints[target], session.profile, resolution), None

    def wpose(target: str) -> tuple[Image.Image, dict]:
        photo_file = tree.file("images", f"{target}.png")
        if not photo_file.exists():
            raise BadInputError(f"{target}: no target photo {photo_file}")
        return pose_from_photo(load_image(photo_file, "RGB"), photo_file, resolution, lambda: session.pose_extractor, session.profile)

    render = deepfashion if inputs.dataset == "deepfashion" else wpose
    return lambda target: maps.get(target, lambda: render(target))


def source_captions(tree: ResultsTree, captions_file: str | os.PathLike | None, profile: Profile = DEFAULT) -> dict[str, str]:
    """Captions by image stem: from an ``index/name/text`` file, else from the results tree's store."""
    if captions_file:
        return read_captions(captions_file, profile)
    return {name: record["caption"] for name, record in CaptionStore(tree).records().items() if record.get("caption")}


def load_inputs(
    dataset: str,
    pairs_file: str | os.PathLike,
    tree: ResultsTree,
    captions_file: str | os.PathLike | None = None,
    keypoints_file: str | os.PathLike | None = None,
    profile: Profile = DEFAULT,
) -> GenerateInputs:
    """The dataset adapter's inputs: the same run for DeepFashion (keypoint CSV) and WPose (target photos)."""
    if dataset not in DATASETS:
        raise BadInputError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    inputs = GenerateInputs(dataset, read_pairs(pairs_file), source_captions(tree, captions_file, profile))
    if dataset == "deepfashion":
        if keypoints_file is None:
            raise BadInputError("DeepFashion target poses need --keypoints fasion-resize-annotation-test.csv")
        inputs.keypoints = read_keypoints_csv(keypoints_file)
    return inputs
