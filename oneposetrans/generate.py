"""Dataset reposing runs (recipe step 5, the ``generate`` command): every pair of a pairs list.

The published scripts reloaded every model for every pair. Here one process loads the models
once, takes a share of the *sources* (so a source's LoRA, caption, image prompt and face are
prepared once, whichever process holds it) and renders all of its target poses in batches
(:class:`~oneposetrans.generator.ReposeStage`). Under ``accelerate launch`` the sources are dealt
round-robin to the processes; every file is written atomically, so any number of runs, killed or
not, leave a consistent tree.

DeepFashion and WPose differ only in where the target pose comes from (:func:`pose_source`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from oneposetrans.errors import BadInputError
from oneposetrans.image_io import load_image
from oneposetrans.results import ResultsTree

DATASETS = ("deepfashion", "wpose")


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
    from oneposetrans.pose import PoseMaps, pose_from_photo, render_deepfashion_pose

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


def run_generate(
    inputs: GenerateInputs, tree: ResultsTree, session, settings, echo: Callable[[str], None] = print, progress: bool = True
) -> dict[str, int]:
    """Render every pair not yet in ``reposed_result``; returns this process's counts.

    Failures (missing LoRA, caption, keypoints or target photo) are logged per pair with their
    reason and the run goes on; :class:`CaseFailures` is raised at the end if there were any.
    """
    from oneposetrans.generator import ReposeStage, group_by_source
    from oneposetrans.stages import run_stage

    stage = ReposeStage(
        tree, settings, pose_source(inputs, tree, settings.resolution, session),
        # Reproducing the paper needs the published input; elsewhere the whole photo will do, with a note.
        require_mask=session.profile.require_person_mask, echo=echo,
    )
    return run_stage(stage, group_by_source(inputs.pairs, inputs.captions), session, tree.log("generate"), echo, progress)


def source_captions(tree: ResultsTree, captions_file: str | os.PathLike | None) -> dict[str, str]:
    """Captions by image stem: from an ``index/name/text`` file, else from the results tree's store."""
    from oneposetrans.caption import CaptionStore
    from oneposetrans.datasets import read_captions

    if captions_file:
        return read_captions(captions_file)
    return {name: record["caption"] for name, record in CaptionStore(tree).records().items() if record.get("caption")}


def load_inputs(
    dataset: str,
    pairs_file: str | os.PathLike,
    tree: ResultsTree,
    captions_file: str | os.PathLike | None = None,
    keypoints_file: str | os.PathLike | None = None,
) -> GenerateInputs:
    """The dataset adapter's inputs: the same run for DeepFashion (keypoint CSV) and WPose (target photos)."""
    from oneposetrans.datasets import read_keypoints_csv, read_pairs

    if dataset not in DATASETS:
        raise BadInputError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    inputs = GenerateInputs(dataset, read_pairs(pairs_file), source_captions(tree, captions_file))
    if dataset == "deepfashion":
        if keypoints_file is None:
            raise BadInputError("DeepFashion target poses need --keypoints fasion-resize-annotation-test.csv")
        inputs.keypoints = read_keypoints_csv(keypoints_file)
    return inputs
