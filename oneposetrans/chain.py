"""The main job: one photo of a person and target poses in, the person in those poses out.

Runs the stages of the method in order over one results tree. Every stage skips the work
whose output file already exists, so a killed run resumes where it stopped. Stages that are
not built yet are listed as skipped with the issue that builds them; nothing is faked.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


from PIL import Image

from oneposetrans.caption import CaptionStore, automatic_captioner, caption_with_retries, conform
from oneposetrans.errors import BadInputError, CaseFailures
from oneposetrans.finetune import FinetuneCase, FinetuneSettings, run_finetune
from oneposetrans.image_io import load_image, save_image
from oneposetrans.pose import BUNDLED_POSES, PoseExtractor, load_pose_map
from oneposetrans.repose import GenerationSettings, Reposer
from oneposetrans.report import contact_sheet
from oneposetrans.results import ResultsTree, is_done, pair_name, stem, write_json_atomic
from oneposetrans.runtime import resolve_device

BUNDLED_SOURCE_NAME = "astronaut"
BUNDLED_CAPTION = (
    "A woman with face, orange spacesuit with mission patches, white collar ring, "
    "short brown hair, smile"
)


@dataclass
class ChainRequest:
    out: Path
    models: Path
    source: Path | None = None
    poses: list[Path] = field(default_factory=list)
    caption: str | None = None
    refine: bool = False
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    device: str = "auto"
    dtype: str = "auto"
    profile: str = "default"
    identitynet: bool = False


@dataclass
class StageStatus:
    stage: str
    status: str
    detail: str = ""


def _bundled_source() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def _ingest_source(request: ChainRequest, tree: ResultsTree) -> tuple[str, StageStatus]:
    name = stem(request.source) if request.source else BUNDLED_SOURCE_NAME
    target = tree.file("images", f"{name}.png")
    if is_done(target):
        return name, StageStatus("source", "resumed", str(target))
    image = load_image(request.source, "RGB") if request.source else _bundled_source()
    save_image(image, target)
    return name, StageStatus("source", "done", str(target))


def _caption(request: ChainRequest, tree: ResultsTree, name: str) -> tuple[str, StageStatus]:
    store = CaptionStore(tree)
    if request.caption:
        store.put(name, request.caption, origin="user")
        return request.caption, StageStatus("caption", "done", "given with --caption")
    stored = store.get(name)
    if stored:
        return stored, StageStatus("caption", "resumed", str(store.path))
    if request.source is None:
        store.put(name, BUNDLED_CAPTION, origin="bundled")
        return BUNDLED_CAPTION, StageStatus("caption", "done", "bundled caption of the bundled photo")
    captioner = automatic_captioner(request.models, request.device)
    raw = caption_with_retries(captioner, load_image(request.source, "RGB"))
    caption = conform(raw)
    if caption is None:
        raise BadInputError(
            f"{request.source}: the caption from {captioner.model} does not fit 'A man/woman with face, ...' "
            f"({raw[:120]!r}); pass --caption yourself"
        )
    store.put(name, caption, origin=captioner.model, file=Path(request.source).name)
    return caption, StageStatus("caption", "done", f"by {captioner.model}")


def run_chain(request: ChainRequest, echo: Callable[[str], None] = print) -> list[StageStatus]:
    """Run every built stage for one source and all its target poses; return the stage report.

    Raises :class:`CaseFailures` at the end if some targets failed; the others are complete.
    """
    tree = ResultsTree(request.out)
    log = tree.log("repose")
    report: list[StageStatus] = []

    name, status = _ingest_source(request, tree)
    report.append(status)
    report.append(StageStatus("segment", "skipped", "not built yet (issue 5)"))
    caption, status = _caption(request, tree, name)
    report.append(status)
    lora = tree.file("lora", f"{name}.safetensors")
    if is_done(lora):
        report.append(StageStatus("finetune", "resumed", str(lora)))
    else:
        source_file = tree.file("images", f"{name}.png")
        run_finetune(
            [FinetuneCase(name, [source_file], caption)],
            tree,
            request.models,
            request.finetune,
            device=request.device,
            echo=lambda line: echo(f"  {line}"),
        )
        report.append(StageStatus("finetune", "done", str(lora)))

    pose_paths = request.poses or list(BUNDLED_POSES)
    targets: dict[str, Image.Image] = {}
    rendered = 0
    # Loaded on first use: only a photo given as a target pose needs the detector.
    extractor = functools.cache(lambda: PoseExtractor(request.models, str(resolve_device(request.device))))

    for pose_path in pose_paths:
        target_name = stem(pose_path)
        map_file = tree.file("poses", f"{target_name}.png")
        try:
            if target_name in targets:
                raise BadInputError(f"{pose_path}: a second target pose named {target_name!r}")
            if is_done(map_file):
                targets[target_name] = load_image(map_file, "RGB")
            else:
                targets[target_name], found = load_pose_map(pose_path, request.settings.resolution, extractor)
                if found is not None:
                    write_json_atomic(tree.file("poses", f"{target_name}.json"), found)
                save_image(targets[target_name], map_file)
                rendered += 1
        except BadInputError as error:
            log.fail(pair_name(name, target_name), str(error))
            echo(f"  failed: {error}")
    report.append(
        StageStatus(
            "pose",
            "done" if rendered else "resumed",
            f"{len(targets)} of {len(pose_paths)} target poses ready, {rendered} rendered now",
        )
    )

    todo = {t: m for t, m in targets.items() if not is_done(tree.file("reposed_result", pair_name(name, t)))}
    for target_name in targets.keys() - todo.keys():
        log.skip(pair_name(name, target_name))
    notes: list[str] = []
    if todo:
        started = time.perf_counter()
        reposer = Reposer(request.models, request.device, request.dtype, request.profile, request.identitynet)
        echo(f"  models loaded in {time.perf_counter() - started:.1f} s")
        names = list(todo)
        started = time.perf_counter()

        def save_batch(first: int, images: list[Image.Image]) -> None:
            # Each batch is written as soon as it exists: a killed run keeps it.
            seconds = (time.perf_counter() - started) / max(1, first + len(images))
            for target_name, image in zip(names[first : first + len(images)], images):
                output = tree.file("reposed_result", pair_name(name, target_name))
                save_image(image, output)
                log.ok(output.name, seconds_per_target=round(seconds, 3), size=list(image.size), mode=image.mode)
                echo(f"  {output.name}")

        source_image = load_image(tree.file("images", f"{name}.png"), "RGB")
        _, notes = reposer.generate(
            caption, list(todo.values()), request.settings, lora=lora, source=source_image, on_batch=save_batch
        )
        for note in notes:
            echo(f"  note: {note}")
    report.append(
        StageStatus(
            "repose",
            "done" if todo else "resumed",
            f"{len(todo)} generated, {len(targets) - len(todo)} already present; VCM (text, IP-Adapter image, "
            f"InstantID face) + OpenPose ControlNet + LoRA + LayerDiffuse alpha"
            + (f"; {'; '.join(notes)}" if notes else ""),
        )
    )
    report.append(StageStatus("inpaint", "skipped", "not built yet (issue 5)"))
    report.append(StageStatus("paste", "skipped", "not built yet (issue 5)"))
    if request.refine:
        report.append(StageStatus("refine", "skipped", "not built yet (issue 6)"))

    sheet = tree.root / "contact_sheet.png"
    if todo or not is_done(sheet):
        source_image = load_image(tree.file("images", f"{name}.png"))
        rows = []
        for target_name, pose_map in targets.items():
            result = tree.file("reposed_result", pair_name(name, target_name))
            rows.append((source_image, pose_map, load_image(result, "RGBA") if is_done(result) else None))
        contact_sheet(rows, sheet)
    report.append(StageStatus("contact sheet", "done", str(sheet)))
    if log.failed:
        raise CaseFailures(f"{len(log.failed)} of {len(pose_paths)} targets failed; {log.summary()}")
    return report


def format_report(report: list[StageStatus]) -> str:
    width = max(len(s.stage) for s in report)
    return "\n".join(f"  {s.stage:<{width}}  {s.status:<8} {s.detail}" for s in report)



