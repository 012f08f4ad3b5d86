"""The main job: one photo of a person and target poses in, the person in those poses out.

Runs the stages of the method in order over one results tree. Every stage skips the work
whose output file already exists, so a killed run resumes where it stopped. Stages left out
on purpose (``--no-composite``, no ``--refine``) are listed as skipped with the reason.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


from PIL import Image

from oneposetrans.caption import CaptionStore, automatic_captioner, caption_with_retries, conform
from oneposetrans.errors import BadInputError, CaseFailures, OnePoseTransError
from oneposetrans.image_io import load_image, save_image
from oneposetrans.pose import BUNDLED_POSES, PoseExtractor, load_pose_map, needs_detector
from oneposetrans import registry
from oneposetrans.report import contact_sheet
from oneposetrans.results import ResultsTree, check_writable_folder, is_done, pair_name, pose_map_name, stem, write_json_atomic
from oneposetrans.settings import FinetuneSettings, GenerationSettings

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
    composite: bool = True
    """Segment the source, inpaint its background and paste the results onto it."""
    inpainter: str = "lama"


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


def chain_models(request: ChainRequest, photo_targets: bool = False) -> list[str]:
    # The source is always segmented: the image prompt and the face read the person on black.
    names = [*registry.GENERATOR_MODELS, "grounding-dino", "sam"]
    if request.identitynet:
        names.append("instantid-identitynet")
    if request.composite:
        names.append("lama" if request.inpainter == "lama" else "sdxl-inpainting")
    if photo_targets:
        names.append("openpose")
    return names


@dataclass
class CheckedInputs:
    """What :func:`check_inputs` found: the target poses that can serve, one line per other, and
    the registry names of the models the run needs."""

    poses: list[Path]
    rejected: list[tuple[Path, str]]
    models: list[str]


def check_inputs(request: ChainRequest) -> CheckedInputs:
    """Everything that can be checked without a model, before anything is created: the results
    folder can be written, the source reads as an image and each target pose parses. A bad target
    pose is set aside with its reason while the others go on; if none is left, the run stops here.
    The models the answer names are checked by the caller (``registry.require_all``), once the
    models folder exists: ``--smoke`` builds it after these checks."""
    check_writable_folder(request.out)
    if request.source is not None:
        load_image(request.source, "RGB")
    poses, rejected, photo_targets, names = [], [], False, set()
    for pose_path in request.poses or list(BUNDLED_POSES):
        try:
            if stem(pose_path) in names:
                raise BadInputError(f"{pose_path}: a second target pose named {stem(pose_path)!r}")
            photo_targets |= needs_detector(pose_path)
            names.add(stem(pose_path))
            poses.append(Path(pose_path))
        except BadInputError as error:
            rejected.append((Path(pose_path), str(error)))
    if not poses:
        raise BadInputError("no usable target pose: " + "; ".join(reason for _, reason in rejected))
    return CheckedInputs(poses, rejected, chain_models(request, photo_targets))


def run_chain(
    request: ChainRequest, echo: Callable[[str], None] = print, checked: CheckedInputs | None = None
) -> list[StageStatus]:
    """Run every built stage for one source and all its target poses; return the stage report.

    ``checked`` is :func:`check_inputs`'s answer, with its models checked, when the caller has
    it already; otherwise both checks run first. Raises
    :class:`CaseFailures` at the end if some targets failed; the others are complete. An error
    raised on the way carries the report of the stages so far as ``error.report``.
    """
    if checked is None:
        checked = check_inputs(request)
        registry.require_all(checked.models, request.models)
    report: list[StageStatus] = []
    try:
        return _run_chain(request, echo, report, checked)
    except OnePoseTransError as error:
        error.report = report
        raise


def _run_chain(
    request: ChainRequest, echo: Callable[[str], None], report: list[StageStatus], checked: CheckedInputs
) -> list[StageStatus]:
    # The model libraries load only once the inputs have passed.
    from oneposetrans.finetune import FinetuneCase, run_finetune
    from oneposetrans.repose import Reposer, load_identity_image
    from oneposetrans.runtime import resolve_device
    from oneposetrans.segment import PersonSegmenter

    tree = ResultsTree(request.out)
    log = tree.log("repose")
    name, status = _ingest_source(request, tree)
    for pose_path, reason in checked.rejected:
        log.fail(pair_name(name, stem(pose_path)), reason)
        echo(f"  failed: {reason}")
    report.append(status)
    # GroundingDINO + SAM load once, on first use, for the source and any result that needs a mask.
    segmenter = functools.cache(lambda: PersonSegmenter(request.models, request.device, request.profile))
    status = _segment_source(request, tree, name, segmenter, echo)
    person_found = status.status != "failed"
    report.append(status)
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

    pose_paths = checked.poses
    targets: dict[str, Image.Image] = {}
    rendered = 0
    # Loaded on first use: only a photo given as a target pose needs the detector.
    extractor = functools.cache(lambda: PoseExtractor(request.models, str(resolve_device(request.device))))

    for pose_path in pose_paths:
        target_name = stem(pose_path)
        map_file = tree.file("poses", pose_map_name(target_name, request.profile))
        try:
            if is_done(map_file):
                targets[target_name] = load_image(map_file, "RGB")
            else:
                targets[target_name], found = load_pose_map(pose_path, request.settings.resolution, extractor, request.profile)
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
            f"{len(targets)} of {len(pose_paths) + len(checked.rejected)} target poses ready, {rendered} rendered now",
        )
    )

    todo = {t: m for t, m in targets.items() if not is_done(tree.file("reposed_result", pair_name(name, t)))}
    for target_name in targets.keys() - todo.keys():
        log.skip(pair_name(name, target_name))
    notes: list[str] = []
    # Loaded on first use, once: generation and refining share it.
    reposer = functools.cache(lambda: Reposer(request.models, request.device, request.dtype, request.profile, request.identitynet))
    if todo:
        started = time.perf_counter()
        reposer()
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

        identity, missing_mask = load_identity_image(tree, name, request.profile)
        _, notes = reposer().generate(
            caption, list(todo.values()), request.settings, lora=lora, source=identity, on_batch=save_batch
        )
        notes = [missing_mask, *notes] if missing_mask else notes
        for note in notes:
            echo(f"  note: {note}")
    report.append(
        StageStatus(
            "repose",
            "done" if todo else "resumed",
            f"{len(todo)} generated, {len(targets) - len(todo)} already present"
            + (f"; {reposer().conditioning}" if todo else "")
            + (f"; {'; '.join(notes)}" if notes else ""),
        )
    )
    finals: dict[str, Path] = {}
    if not request.composite:
        report.append(StageStatus("inpaint", "skipped", "--no-composite"))
        report.append(StageStatus("paste", "skipped", "--no-composite"))
    elif not person_found:
        report.append(StageStatus("inpaint", "skipped", "no person mask of the source"))
        report.append(StageStatus("paste", "skipped", "no person mask of the source"))
    else:
        report.append(_inpaint_source(request, tree, name, echo))
        status, finals = _paste_results(request, tree, name, list(targets), segmenter, echo)
        report.append(status)
    if request.refine:
        report += _refine_results(request, tree, name, caption, list(targets), reposer, segmenter, person_found, echo)

    sheet = tree.root / "contact_sheet.png"
    if todo or not is_done(sheet):
        source_image = load_image(tree.file("images", f"{name}.png"))
        rows = []
        for target_name, pose_map in targets.items():
            result = tree.file("reposed_result", pair_name(name, target_name))
            row = [source_image, pose_map, load_image(result, "RGBA") if is_done(result) else None]
            if request.composite:
                final = finals.get(target_name)
                row.append(load_image(final, "RGB") if final is not None and is_done(final) else None)
            rows.append(tuple(row))
        contact_sheet(rows, sheet, header=("source", "pose", "result", "composite") if request.composite else ("source", "pose", "result"))
    report.append(StageStatus("contact sheet", "done", str(sheet)))
    failed = [s for s in report if s.status == "failed"]
    if log.failed:
        total = len(pose_paths) + len(checked.rejected)
        failed.append(StageStatus("repose", "failed", f"{len(log.failed)} of {total} targets failed; {log.summary()}"))
    if failed:
        raise CaseFailures("; ".join(f"{s.stage}: {s.detail}" for s in failed))
    return report


def _segment_source(request: ChainRequest, tree: ResultsTree, name: str, segmenter, echo: Callable[[str], None]) -> StageStatus:
    """Step 1 of the recipe for the one source: RGBA with the person as alpha, dilated mask."""
    from oneposetrans.segment import NoPersonError, SegmentOutputs

    outputs = SegmentOutputs.for_mode("dataset", tree.folder("images_mask"), tree.folder("images_rgba"), None)
    if all(is_done(f) for f in outputs.files(name)):
        return StageStatus("segment", "resumed", str(outputs.files(name)[0]))
    source = tree.file("images", f"{name}.png")
    image = load_image(source, "RGB")
    try:
        found = segmenter().segment(image, name=str(request.source or source))
    except NoPersonError as error:
        tree.log("segment").fail(name, str(error))
        echo(f"  failed: {error}")
        return StageStatus("segment", "failed", str(error))
    outputs.write(image, found, name)
    tree.log("segment").ok(name, people=found.people, score=round(found.score, 4))
    return StageStatus("segment", "done", f"{found.people} people found, the {'most confident' if request.profile == 'reference' else 'largest'} kept")


def _inpaint_source(request: ChainRequest, tree: ResultsTree, name: str, echo: Callable[[str], None]) -> StageStatus:
    from oneposetrans.inpaint import make_inpainter

    background = tree.file("images_inpainted", f"{name}.png")
    if is_done(background):
        return StageStatus("inpaint", "resumed", str(background))
    inpainter = make_inpainter(request.inpainter, request.models, request.device, request.dtype, request.profile)
    image = load_image(tree.file("images", f"{name}.png"), "RGB")
    save_image(inpainter(image, load_image(tree.file("images_mask", f"{name}.png"), "L")), background)
    tree.log("inpaint").ok(name, inpainter=request.inpainter)
    return StageStatus("inpaint", "done", f"{request.inpainter}: {background}")


def _refine_results(
    request: ChainRequest, tree: ResultsTree, name: str, caption: str, target_names: list[str], reposer, segmenter,
    person_found: bool, echo: Callable[[str], None],
) -> list[StageStatus]:
    """Step 9 for this source's results, then their paste onto the background (steps 10-11)."""
    from oneposetrans.refine import RefineSettings, Refiner, run_refine

    names = [pair_name(name, target) for target in target_names]
    counts = run_refine(
        tree,
        lambda: Refiner(reposer(), request.models),
        {name: caption},
        RefineSettings(resolution=request.settings.resolution),
        profile=request.profile,
        names=names,
        echo=lambda line: echo(f"  {line}"),
    )
    report = [StageStatus("refine", "done" if counts["done"] else "resumed", f"{counts['done']} refined, {counts['skipped']} already present")]
    if request.composite and person_found:
        status, _ = _paste_results(request, tree, name, target_names, segmenter, echo, stage="refined")
        report.append(StageStatus("paste refined", status.status, status.detail))
    return report


def _paste_results(
    request: ChainRequest, tree: ResultsTree, name: str, target_names: list[str], segmenter, echo: Callable[[str], None],
    stage: str = "reposed",
) -> tuple[StageStatus, dict[str, Path]]:
    """Every finished result (``reposed`` or ``refined``) onto the background; results without a
    usable alpha, and every result in the reference profile, are segmented first."""
    from oneposetrans.composite import carries_alpha, composite
    from oneposetrans.segment import NoPersonError, SegmentOutputs

    background = load_image(tree.file("images_inpainted", f"{name}.png"), "RGB")
    log = tree.log("paste")
    finals, pasted = {}, 0
    for target_name in target_names:
        result = tree.file(f"{stage}_result", pair_name(name, target_name))
        final = tree.file(f"{stage}_final_result", result.name)
        finals[target_name] = final
        if not is_done(result) or is_done(final):
            continue
        foreground = load_image(result, "RGBA")
        mask = None
        if request.profile == "reference" or not carries_alpha(foreground):
            # As the published recipe (steps 7-8): person on black and its mask from SAM.
            mask_file = tree.file(f"{stage}_mask", result.name)
            if not is_done(mask_file):
                try:
                    found = segmenter().segment(foreground.convert("RGB"), name=str(result))
                except NoPersonError as error:
                    log.fail(result.stem, str(error))
                    echo(f"  failed: {error}")
                    continue
                # The reference recipe's steps 6-7 (10 for refined results): RGBA for refining, person on black, mask.
                SegmentOutputs(
                    rgba=tree.folder("reposed_rgba") if stage == "reposed" else None,
                    rgb=tree.folder(f"{stage}_rgb"),
                    mask=tree.folder(f"{stage}_mask"),
                ).write(foreground.convert("RGB"), found, result.stem)
            mask = load_image(mask_file, "L")
            if request.profile == "reference":
                foreground = load_image(tree.file(f"{stage}_rgb", result.name), "RGB")
        save_image(composite(foreground, background, mask, request.profile), final)
        log.ok(result.stem, matte="mask" if mask is not None else "alpha")
        pasted += 1
    if log.failed:
        return StageStatus("paste", "failed", f"{pasted} composited, {len(log.failed)} without a person ({log.path})"), finals
    detail = f"{pasted} composited onto the inpainted background in {stage}_final_result"
    return StageStatus("paste", "done" if pasted else "resumed", detail), finals


def format_report(report: list[StageStatus]) -> str:
    width = max(len(s.stage) for s in report)
    return "\n".join(f"  {s.stage:<{width}}  {s.status:<8} {s.detail}" for s in report)



