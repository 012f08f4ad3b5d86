"""The ``repose`` command, the main job: one photo of a person and target poses in, the person
in those poses out.

The steps of the recipe (:class:`~oneposetrans.recipe.Recipe`) over one source and its target
poses, in one results tree. Every step skips the work whose output file already exists, so a
killed run resumes where it stopped. Steps left out on purpose (``--no-composite``, no
``--refine``) are listed as skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


from PIL import Image

from oneposetrans import registry
from oneposetrans.errors import BadInputError, CaseFailures, OnePoseTransError
from oneposetrans.image_io import load_image, save_image
from oneposetrans.pose import BUNDLED_POSES, needs_detector
from oneposetrans.results import ResultsTree, check_writable_folder, is_done, pair_name, stem
from oneposetrans.settings import FinetuneSettings, GenerationSettings, RefineSettings

BUNDLED_SOURCE_NAME = "astronaut"
BUNDLED_CAPTION = (
    "A woman with face, orange spacesuit with mission patches, white collar ring, "
    "short brown hair, smile"
)


@dataclass
class ReposeRequest:
    """What to do; how (models, device, profile) is the :class:`~oneposetrans.session.Session`'s."""

    out: Path
    source: Path | None = None
    poses: list[Path] = field(default_factory=list)
    caption: str | None = None
    refine: bool = False
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
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


def _ingest_source(request: ReposeRequest, tree: ResultsTree) -> tuple[str, StageStatus]:
    name = stem(request.source) if request.source else BUNDLED_SOURCE_NAME
    target = tree.file("images", f"{name}.png")
    if is_done(target):
        return name, StageStatus("source", "resumed", str(target))
    image = load_image(request.source, "RGB") if request.source else _bundled_source()
    save_image(image, target)
    return name, StageStatus("source", "done", str(target))


def repose_models(request: ReposeRequest, photo_targets: bool = False) -> list[str]:
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


def check_inputs(request: ReposeRequest) -> CheckedInputs:
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
    return CheckedInputs(poses, rejected, repose_models(request, photo_targets))


def run_repose(
    request: ReposeRequest, session, echo: Callable[[str], None] = print, checked: CheckedInputs | None = None
) -> list[StageStatus]:
    """Run every step for one source and all its target poses; return the stage report.

    ``checked`` is :func:`check_inputs`'s answer, with its models checked, when the caller has
    it already; otherwise both checks run first. Raises :class:`CaseFailures` at the end if some
    targets failed; the others are complete. An error raised on the way carries the report of
    the steps so far as ``error.report``.
    """
    if checked is None:
        checked = check_inputs(request)
        registry.require_all(checked.models, session.models)
    report: list[StageStatus] = []
    try:
        return _run_repose(request, session, echo, report, checked)
    except OnePoseTransError as error:
        error.report = report
        raise


def _step(report: list[StageStatus], stage: str, run: Callable[[], dict], describe: Callable[[dict], str]) -> StageStatus:
    """Run one step of the recipe and add its line to the report."""
    try:
        counts = run()
    except CaseFailures as error:
        status = StageStatus(stage, "failed", str(error))
    else:
        status = StageStatus(stage, "done" if counts["done"] else "resumed", describe(counts))
    report.append(status)
    return status


def _run_repose(
    request: ReposeRequest, session, echo: Callable[[str], None], report: list[StageStatus], checked: CheckedInputs
) -> list[StageStatus]:
    from oneposetrans.finetune import FinetuneCase
    from oneposetrans.generator import ReposeCase
    from oneposetrans.pose import PoseMaps, load_pose_map
    from oneposetrans.recipe import Recipe

    tree = ResultsTree(request.out)
    log = tree.log("repose")
    name, status = _ingest_source(request, tree)
    for pose_path, reason in checked.rejected:
        log.fail(pair_name(name, stem(pose_path)), reason)
        echo(f"  failed: {reason}")
    report.append(status)
    recipe = Recipe(
        tree, session, request.settings, request.finetune, RefineSettings(resolution=request.settings.resolution),
        echo=lambda line: echo(f"  {line}"), shown_as={name: str(request.source)} if request.source else None,
    )
    rgba = tree.file("images_rgba", f"{name}.png")
    status = _step(report, "segment", lambda: recipe.segment_sources([name]), lambda counts: str(rgba))
    person_found = status.status != "failed"
    caption, status = _caption(request, recipe, name)
    report.append(status)
    lora = tree.file("lora", f"{name}.safetensors")
    counts = recipe.finetune([FinetuneCase(name, [tree.file("images", f"{name}.png")], caption)])
    report.append(StageStatus("finetune", "done" if counts["done"] else "resumed", str(lora)))

    maps = PoseMaps(tree, session.profile)
    files = {stem(path): path for path in checked.poses}

    def pose_of(target: str):
        resolution = request.settings.resolution
        return maps.get(target, lambda: load_pose_map(files[target], resolution, lambda: session.pose_extractor, session.profile))

    ready = []
    for target in files:
        try:
            pose_of(target)
            ready.append(target)
        except BadInputError as error:
            log.fail(pair_name(name, target), str(error))
            echo(f"  failed: {error}")
    total = len(files) + len(checked.rejected)
    detail = f"{len(ready)} of {total} target poses ready, {maps.rendered} rendered now"
    report.append(StageStatus("pose", "done" if maps.rendered else "resumed", detail))

    reposing = []

    def repose() -> dict:
        counts, stage = recipe.repose([ReposeCase(name, ready, caption)], pose_of, log="repose")
        reposing.append(stage)
        return counts

    def describe_repose(counts: dict) -> str:
        detail = f"{counts['done']} generated, {counts['skipped']} already present"
        if counts["done"]:
            detail += f"; {reposing[0].conditioning}" + "".join(f"; {note}" for note in reposing[0].notes)
        return detail

    _step(report, "repose", repose, describe_repose)
    results = [pair_name(name, target) for target in ready]
    refines_rgba = request.refine and session.profile.refine_input == "published"
    if (request.composite and person_found) or refines_rgba:
        # The published refining pass reads the results' RGBA of step 6 (the generated colours, SAM's alpha).
        writes = ("rgba", "rgb", "mask") if refines_rgba else ("rgb", "mask")
        _segment_results(recipe, "reposed", writes, results)
    if not request.composite:
        report += [StageStatus("inpaint", "skipped", "--no-composite"), StageStatus("paste", "skipped", "--no-composite")]
    elif not person_found:
        reason = "no person mask of the source"
        report += [StageStatus("inpaint", "skipped", reason), StageStatus("paste", "skipped", reason)]
    else:
        background = tree.file("images_inpainted", f"{name}.png")
        _step(report, "inpaint", lambda: recipe.inpaint([name]), lambda counts: f"{session.inpainter_kind}: {background}")
        _paste(report, "paste", recipe, "reposed", results)
    if request.refine:
        _step(
            report, "refine", lambda: recipe.refine({name: caption}, results),
            lambda counts: f"{counts['done']} refined, {counts['skipped']} already present",
        )
        if request.composite and person_found:
            _segment_results(recipe, "refined", ("rgb", "mask"), results)
            _paste(report, "paste refined", recipe, "refined", results)

    sheet = tree.root / "contact_sheet.png"
    # Redrawn when a step wrote something new, so a finished run resumes without writing a file.
    if any(status.status == "done" for status in report) or not is_done(sheet):
        _contact_sheet(tree, name, maps, ready, request.composite, sheet)
    report.append(StageStatus("contact sheet", "done", str(sheet)))
    failed = [s for s in report if s.status == "failed"]
    if log.failed:
        failed.append(StageStatus("repose", "failed", f"{len(log.failed)} of {total} targets failed; {log.summary()}"))
    if failed:
        raise CaseFailures("; ".join(f"{s.stage}: {s.detail}" for s in failed))
    return report


def _segment_results(recipe, kind: str, writes: tuple[str, ...], results: list[str]) -> None:
    """Masks of the results for the paste. One that cannot be segmented is not pasted; its reason
    is in the segment log and on the screen already, and the paste's line counts it."""
    try:
        recipe.segment_results(kind, writes, results)
    except CaseFailures:
        pass


def _paste(report: list[StageStatus], label: str, recipe, kind: str, results: list[str]) -> None:
    tree = recipe.tree
    # Only results with their mask (segmented, or from their own alpha) can be pasted.
    pastable = [result for result in results if is_done(tree.file(f"{kind}_mask", result))]
    lost = [result for result in results if result not in pastable and is_done(tree.file(f"{kind}_result", result))]
    status = _step(
        report, label, lambda: recipe.paste(kind, pastable),
        lambda counts: f"{counts['done']} composited onto the inpainted background in {kind}_final_result",
    )
    if lost:
        status.status = "failed"
        status.detail = f"{len(lost)} without a person ({tree.log('segment').path}); {status.detail}"


def _contact_sheet(tree: ResultsTree, name: str, maps, targets: list[str], composite: bool, sheet: Path) -> None:
    from oneposetrans.report import contact_sheet

    source_image = load_image(tree.file("images", f"{name}.png"))
    rows = []
    for target in targets:
        result = tree.file("reposed_result", pair_name(name, target))
        row = [source_image, load_image(maps.path(target), "RGB"), load_image(result, "RGBA") if is_done(result) else None]
        if composite:
            final = tree.file("reposed_final_result", result.name)
            row.append(load_image(final, "RGB") if is_done(final) else None)
        rows.append(tuple(row))
    contact_sheet(rows, sheet, header=("source", "pose", "result", "composite") if composite else ("source", "pose", "result"))


def _caption(request: ReposeRequest, recipe, name: str) -> tuple[str, StageStatus]:
    """The caption: given with --caption, already in the store, the bundled photo's, or written
    by the captioner (step 2)."""
    from oneposetrans.caption import CaptionStore

    store = CaptionStore(recipe.tree)
    if request.caption:
        store.put(name, request.caption, origin="user")
        return request.caption, StageStatus("caption", "done", "given with --caption")
    stored = store.get(name)
    if stored:
        return stored, StageStatus("caption", "resumed", str(store.path))
    if request.source is None:
        store.put(name, BUNDLED_CAPTION, origin="bundled")
        return BUNDLED_CAPTION, StageStatus("caption", "done", "bundled caption of the bundled photo")
    try:
        recipe.caption([name])
    except CaseFailures:
        raise BadInputError(f"{request.source}: no usable caption (the reason is above); pass --caption") from None
    record = store.records()[name]
    return record["caption"], StageStatus("caption", "done", f"by {record['origin']}")


def format_report(report: list[StageStatus]) -> str:
    width = max(len(s.stage) for s in report)
    return "\n".join(f"  {s.stage:<{width}}  {s.status:<8} {s.detail}" for s in report)



