"""Dataset reposing runs (recipe step 5): every pair of a pairs list, grouped by source.

The published scripts reloaded every model for every pair. Here one process loads the models
once, takes a share of the *sources* (so a source's LoRA, caption, image prompt and face are
prepared once, whichever process holds it) and renders all of its target poses in batches.
Under ``accelerate launch`` the sources are dealt round-robin to the processes; every file is
written atomically, so any number of runs, killed or not, leave a consistent tree.

DeepFashion and WPose differ only in where the target pose comes from (:func:`target_pose`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from oneposetrans.errors import BadInputError, CaseFailures
from oneposetrans.image_io import load_image, save_image
from oneposetrans.progress import case_line
from oneposetrans.results import ResultsTree, StageLog, is_done, pair_name, pose_map_name, stem, write_json_atomic

DATASETS = ("deepfashion", "wpose")


@dataclass
class DatasetCase:
    """One source and the targets it still needs."""

    source: str
    targets: list[str]
    caption: str | None


@dataclass
class GenerateInputs:
    """What a dataset run reads besides the results tree."""

    dataset: str
    pairs: list[tuple[str, str]]
    captions: dict[str, str]
    keypoints: dict | None = None
    """DeepFashion target keypoints by image stem (from the annotation CSV)."""
    extractor: Callable | None = None
    """WPose: a factory for the OpenPose detector, called on first use; target photos are read
    from the results tree's ``images`` folder, beside the sources."""


def group_by_source(pairs: list[tuple[str, str]], captions: dict[str, str], tree: ResultsTree, log: StageLog) -> list[DatasetCase]:
    """Sources in first-seen order with the targets not yet rendered; finished pairs are logged as skipped."""
    cases: dict[str, DatasetCase] = {}
    for source, target in pairs:
        source, target = stem(source), stem(target)
        case = cases.setdefault(source, DatasetCase(source, [], captions.get(source)))
        if target in case.targets:
            continue
        if is_done(tree.file("reposed_result", pair_name(source, target))):
            log.skip(pair_name(source, target))
        else:
            case.targets.append(target)
    return [case for case in cases.values() if case.targets]


def target_pose(inputs: GenerateInputs, target: str, tree: ResultsTree, resolution: int, profile: str) -> Image.Image:
    """The ControlNet map of one target, rendered once per profile into ``poses/`` (:func:`pose_map_name`)."""
    from oneposetrans.pose import fit_pose_map, render_deepfashion_pose

    cached = tree.file("poses", pose_map_name(target, profile))
    if is_done(cached):
        return load_image(cached, "RGB")
    if inputs.dataset == "deepfashion":
        if inputs.keypoints is None or target not in inputs.keypoints:
            raise BadInputError(f"{target}: no keypoints for this target in the annotation CSV")
        pose_map = render_deepfashion_pose(inputs.keypoints[target], profile, resolution)
    else:
        photo_file = tree.file("images", f"{target}.png")
        if not photo_file.exists():
            raise BadInputError(f"{target}: no target photo {photo_file}")
        found, pose_map = inputs.extractor().extract(load_image(photo_file, "RGB"), resolution)
        if not found["people"]:
            raise BadInputError(f"{photo_file}: no person found by the pose detector")
        write_json_atomic(tree.file("poses", f"{target}.json"), found)
        pose_map = fit_pose_map(pose_map, profile, resolution)
    save_image(pose_map, cached)
    return pose_map


def run_generate(
    inputs: GenerateInputs,
    tree: ResultsTree,
    reposer_factory: Callable,
    settings,
    profile: str = "default",
    device: str = "auto",
    echo: Callable[[str], None] = print,
) -> dict[str, int]:
    """Render every pair not yet in ``reposed_result``; returns this process's counts.

    Failures (missing LoRA, caption, keypoints or target photo) are logged per pair with their
    reason and the run goes on; :class:`CaseFailures` is raised at the end if there were any.
    """
    import torch
    from accelerate import PartialState

    from oneposetrans.repose import load_identity_image

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    log = tree.log("generate")
    cases = group_by_source(inputs.pairs, inputs.captions, tree, log)
    mine = cases[state.process_index :: state.num_processes]
    prefix = f"[process {state.process_index}] " if state.num_processes > 1 else ""
    reposer = None
    done = 0
    run_started = time.perf_counter()
    for number, case in enumerate(mine, 1):
        pairs = [pair_name(case.source, target) for target in case.targets]
        try:
            if not case.caption:
                raise BadInputError(f"{case.source}: no caption (run caption, or pass --captions)")
            lora = tree.file("lora", f"{case.source}.safetensors")
            if not is_done(lora):
                raise BadInputError(f"{case.source}: no LoRA {lora} (run finetune first)")
            # Reproducing the paper needs the published input; elsewhere the whole photo will do, with a note.
            source, missing_mask = load_identity_image(tree, case.source, profile, required=profile == "reference")
        except BadInputError as error:
            for pair in pairs:
                log.fail(pair, str(error))
            echo(f"{prefix}failed: {error}")
            continue
        maps, names = [], []
        for target, pair in zip(case.targets, pairs):
            try:
                maps.append(target_pose(inputs, target, tree, settings.resolution, profile))
                names.append(pair)
            except BadInputError as error:
                log.fail(pair, str(error))
                echo(f"{prefix}failed: {error}")
        if not maps:
            continue
        if reposer is None:
            started = time.perf_counter()
            reposer = reposer_factory()
            echo(f"{prefix}models loaded in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()

        def save_batch(first: int, images: list[Image.Image]) -> None:
            seconds = (time.perf_counter() - started) / (first + len(images))
            for name, image in zip(names[first : first + len(images)], images):
                save_image(image, tree.file("reposed_result", name))
                log.ok(name, seconds_per_target=round(seconds, 3), size=list(image.size), process=state.process_index)

        _, notes = reposer.generate(case.caption, maps, settings, lora=lora, source=source, on_batch=save_batch)
        notes = [missing_mask, *notes] if missing_mask else notes
        done += len(maps)
        note = f"; {'; '.join(notes)}" if notes else ""
        echo(prefix + case_line(number, len(mine), run_started, f"{case.source}: {len(maps)} targets in {time.perf_counter() - started:.1f} s{note}"))
    echo(f"{prefix}{log.summary()}")
    if log.failed:
        raise CaseFailures(log.summary())
    return {"done": done, "skipped": log.skipped}


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
    models_dir: str | os.PathLike | None = None,
    device: str = "cpu",
) -> GenerateInputs:
    """The dataset adapter: the same run for DeepFashion (keypoint CSV) and WPose (target photos)."""
    import functools

    from oneposetrans.datasets import read_keypoints_csv, read_pairs

    if dataset not in DATASETS:
        raise BadInputError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    inputs = GenerateInputs(dataset, read_pairs(pairs_file), source_captions(tree, captions_file))
    if dataset == "deepfashion":
        if keypoints_file is None:
            raise BadInputError("DeepFashion target poses need --keypoints fasion-resize-annotation-test.csv")
        inputs.keypoints = read_keypoints_csv(keypoints_file)
    else:
        from oneposetrans.pose import PoseExtractor

        inputs.extractor = functools.cache(lambda: PoseExtractor(models_dir, device))
    return inputs
