"""``imagpose generate``: one IMAGPose pass for one person, a stage over the shared results tree.

The sources go to ``images/``, the pose maps to ``poses/``, each result to
``reposed_result/<source>_to_<target>.png`` (so ``evaluate`` scores it as it scores OnePoseTrans)
and the whole decoded canvas to ``canvas_<source>.png``. A pass whose results exist is skipped,
so a killed run resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from oneposetrans import registry
from oneposetrans.errors import BadInputError
from oneposetrans.image_io import load_image, save_image
from oneposetrans.imagpose.pipeline_imagpose import ImagPosePipelineOutput
from oneposetrans.pose import PoseMaps, load_pose_map, pose_from_photo
from oneposetrans.progress import Progress
from oneposetrans.results import ResultsTree, StageLog, pair_name, stem
from oneposetrans.settings import ImagPoseSettings
from oneposetrans.stages import Done, Stage


def bundled_source() -> Path:
    """The bundled photo (scikit-image's astronaut) cut to the bundled poses' 2:3 frame, written
    once beside the tiny kit: the source of ``imagpose generate --smoke`` without ``--source``."""
    from skimage import data

    from oneposetrans.results import atomic_path
    from oneposetrans.testing.tiny import tiny_cache_dir

    path = tiny_cache_dir().parent / "bundled" / "astronaut_2x3.png"
    if not path.exists():
        photo = Image.fromarray(data.astronaut())
        width = round(photo.height * 2 / 3)
        left = (photo.width - width) // 2
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial:
            photo.crop((left, 0, left + width, photo.height)).save(partial, format="PNG")
    return path


def checkpoint_models(session, checkpoint: Path) -> list[str]:
    """The registry's IMAGPose checkpoint when ``checkpoint`` is its folder (the default); a
    folder given by the user is checked when it loads."""
    default = session.models is not None and Path(checkpoint) == Path(session.models) / registry.spec("imagpose").folder
    return ["imagpose"] if default else []


def sample(session, checkpoint: Path, sources: list[Image.Image], source_poses: list[Image.Image], targets: list[Image.Image],
           mode: str, settings: ImagPoseSettings) -> ImagPosePipelineOutput:
    """One pass of the checkpoint's pipeline (loaded once per session) with the sampling settings,
    its steps shown the project's way; a pass the pipeline refuses is one line. The profile picks
    the image encoder's input: the published sampler squashed the photo to 224x224."""
    pipeline = session.imagpose(checkpoint)
    encoder_input = "squashed" if session.profile.imagpose_encoder_input == "published" else "padded"
    with Progress(settings.steps, f"imagpose {mode}") as bar:
        try:
            return pipeline(
                sources, source_poses, targets, mode,
                num_inference_steps=settings.steps, guidance_scale=settings.guidance, tile_long_side=settings.tile_long_side,
                generator=torch.Generator("cpu").manual_seed(settings.seed), callback_on_step_end=bar.step_callback(),
                encoder_input=encoder_input,
            )
        except ValueError as error:
            raise BadInputError(str(error)) from None


@dataclass(frozen=True)
class GenerateCase:
    """One pass: photos of one person, their poses (None: detected) and the target poses, as files."""

    sources: tuple[Path, ...]
    targets: tuple[Path, ...]
    source_poses: tuple[Path, ...] | None
    mode: str


class GenerateStage(Stage[GenerateCase]):
    """Generate each pass's targets into ``reposed_result``."""

    name = "imagpose"
    unit = "pass"

    def __init__(self, tree: ResultsTree, checkpoint: Path, settings: ImagPoseSettings, detects_poses: bool = False):
        self.tree = tree
        self.checkpoint = checkpoint
        self.settings = settings
        self.detects_poses = detects_poses

    def models(self, session) -> list[str]:
        return [*checkpoint_models(session, self.checkpoint), *["openpose"] * self.detects_poses]

    def case_name(self, case: GenerateCase) -> str:
        return stem(case.sources[0])

    def outputs(self, case: GenerateCase) -> list[Path]:
        return [self.tree.file("reposed_result", pair_name(stem(case.sources[0]), stem(target))) for target in case.targets]

    def run(self, case: GenerateCase, session, log: StageLog) -> Done:
        side = self.settings.tile_long_side
        maps = PoseMaps(self.tree, session.profile)
        extractor = lambda: session.pose_extractor  # noqa: E731
        sources, source_poses = [], []
        for index, path in enumerate(case.sources):
            picture = load_image(path, "RGB")
            save_image(picture, self.tree.file("images", f"{stem(path)}.png"))
            if case.source_poses:
                pose_file = case.source_poses[index]
                pose_map = maps.get(f"{stem(path)}.source", lambda: load_pose_map(pose_file, side, extractor))
                same_frame(pose_file, pose_map.size, path, picture.size)
            else:
                pose_map = maps.get(f"{stem(path)}.source", lambda: pose_from_photo(picture, path, side, extractor))
            sources.append(picture)
            source_poses.append(with_person(pose_map, path))
        targets = [with_person(maps.get(stem(path), lambda: load_pose_map(path, side, extractor)), path) for path in case.targets]
        started = time.perf_counter()
        output = sample(session, self.checkpoint, sources, source_poses, targets, case.mode, self.settings)
        seconds = round(time.perf_counter() - started, 3)
        for result, image in zip(self.outputs(case), output.images):
            save_image(image, result)
            log.ok(result.stem, mode=case.mode, steps=self.settings.steps, seconds=seconds, size=list(image.size))
        save_image(output.canvas, self.tree.root / f"canvas_{stem(case.sources[0])}.png")
        return Done(f"{self.case_name(case)}: {len(output.images)} result(s) of mode {case.mode} in {seconds:.1f} s")


def with_person(pose_map: Image.Image, path: Path) -> Image.Image:
    """A pose map with nothing drawn has no person to pose."""
    if max(high for _, high in pose_map.getextrema()) < 16:
        raise BadInputError(f"{path}: the pose has no person (nothing is drawn)")
    return pose_map


def check_pose_files(sources: list[Path], source_poses: list[Path] | None, targets: list[Path]) -> None:
    """What the pose files show before anything is written: each drawn pose has a person, and each
    source's pose is drawn on its photo's frame. One line for the first problem."""
    import numpy as np

    from oneposetrans.pose import _looks_like_pose_map, load_keypoints

    for path in [*targets, *(source_poses or [])]:
        if Path(path).suffix.lower() == ".json":
            if np.isnan(load_keypoints(path).points).all():
                raise BadInputError(f"{path}: the pose has no person (no keypoint)")
        else:
            picture = load_image(path, "RGB")
            if _looks_like_pose_map(picture):
                with_person(picture, path)
    for photo_file, pose_file in zip(sources, source_poses or []):
        with Image.open(photo_file) as photo:
            same_frame(pose_file, _declared_frame(pose_file), photo_file, photo.size)


def same_frame(pose_file: Path, pose_size: tuple[int, int], photo_file: Path, photo_size: tuple[int, int]) -> None:
    """A source's pose must be drawn in its photo's frame, or the tiles would not line up."""
    pose_ratio, photo_ratio = pose_size[0] / pose_size[1], photo_size[0] / photo_size[1]
    if abs(pose_ratio / photo_ratio - 1) > 0.02:
        width, height = _declared_frame(pose_file)
        raise BadInputError(
            f"{pose_file}: drawn on a {width}x{height} frame (aspect {width / height:.2f}), but the source {photo_file} is "
            f"{photo_size[0]}x{photo_size[1]} (aspect {photo_ratio:.2f}); a source's pose must be drawn on its own photo's frame: "
            "give that pose with --source-pose, or leave --source-pose out to detect it"
        )


def _declared_frame(pose_file: Path) -> tuple[int, int]:
    """The frame the user's file gives: a JSON's canvas, a map's or photo's own size."""
    if Path(pose_file).suffix.lower() == ".json":
        from oneposetrans.pose import load_keypoints

        keypoints = load_keypoints(pose_file)
        return keypoints.width, keypoints.height
    with Image.open(pose_file) as image:
        return image.size
