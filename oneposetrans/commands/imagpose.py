"""``python -m oneposetrans imagpose ...``: build an untrained checkpoint, and generate.

``generate`` writes the results tree that every method shares: the sources in ``images/``, the
pose maps in ``poses/``, each result as ``reposed_result/<source>_to_<target>.png`` (so
``evaluate`` scores it as it scores OnePoseTrans), the whole decoded canvas as
``canvas_<source>.png`` for inspection, and ``contact_sheet.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from oneposetrans.commands import SMOKE_BANNER, add_common, echo, models_dir, open_session
from oneposetrans.errors import BadInputError
from oneposetrans.imagpose.canvas import MODES, layout

MODE_CHOICES = ("auto", *MODES)


def add(commands) -> None:
    from oneposetrans.settings import ImagPoseSettings

    defaults = ImagPoseSettings()
    imagpose = commands.add_parser(
        "imagpose",
        help="IMAGPose (NeurIPS 2024): 1->1, 1->N targets and K->1 views in one denoising pass",
        description="The second method: one joint 2x2 canvas per pass. No IMAGPose weights were ever published: "
        "`imagpose init` builds an untrained checkpoint from the stock parts, which training turns into a model.",
    )
    actions = imagpose.add_subparsers(dest="action", required=True, metavar="ACTION")

    init = actions.add_parser("init", help="an untrained checkpoint folder from SD1.5, sd-vae-ft-mse, DINOv2 and AnimateDiff v2")
    init.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    add_common(init, results=False)
    init.set_defaults(handler=_cmd_init)

    generate = actions.add_parser(
        "generate",
        help="the person of the source photo(s) in the target pose(s), one pass",
        description="Modes: t1 [src, -, -, -] (the paper's default), t2 [src x3, -], multi-target (1 source, "
        "up to 3 poses), multi-source (up to 3 views, 1 pose); auto picks t1, multi-target or multi-source "
        "from the counts. Source poses are detected with OpenPose unless --source-pose gives them.",
    )
    generate.add_argument("--source", type=Path, nargs="+", required=True, help="photo(s) of one person (up to 3)")
    generate.add_argument("--pose", type=Path, nargs="+", required=True, help="target pose(s): OpenPose JSON, pose map or photo (up to 3)")
    generate.add_argument("--source-pose", type=Path, nargs="+", help="the sources' poses, in the same order (default: detected)")
    generate.add_argument("--checkpoint", type=Path, help="IMAGPose checkpoint folder (default: MODELS/imagpose)")
    generate.add_argument("--out", type=Path, required=True, help="results tree")
    generate.add_argument("--mode", choices=MODE_CHOICES, default="auto", help="how the canvas is filled")
    generate.add_argument("--denoise-steps", "--steps", dest="steps", type=int, default=defaults.steps, help="DDIM steps")
    generate.add_argument("--guidance", type=float, default=defaults.guidance, help="classifier-free guidance on the FLC tokens")
    generate.add_argument("--seed", type=int, default=defaults.seed, help="sampling seed")
    generate.add_argument("--tile", type=int, default=defaults.tile_long_side, help="long side of a tile, a multiple of 64 (--smoke: 128)")
    add_common(generate, results=False)
    generate.set_defaults(handler=_cmd_generate)


def pick_mode(mode: str, sources: int, targets: int) -> str:
    if mode != "auto":
        return mode
    if sources > 1 and targets > 1:
        raise BadInputError(f"{sources} sources and {targets} target poses: one pass takes several sources or several targets, not both")
    return "multi-source" if sources > 1 else "multi-target" if targets > 1 else "t1"


def _cmd_init(arguments: argparse.Namespace) -> int:
    from oneposetrans import registry
    from oneposetrans.imagpose.checkpoint import initialise

    models = models_dir(arguments)
    registry.require_all(registry.TASKS["imagpose-init"], models)
    folder = initialise(models, arguments.out)
    print(f"untrained IMAGPose checkpoint written to {folder}")
    return 0


def _cmd_generate(arguments: argparse.Namespace) -> int:
    from oneposetrans import registry
    from oneposetrans.image_io import load_image, save_image
    from oneposetrans.imagpose.pipeline_imagpose import ImagPosePipeline
    from oneposetrans.settings import ImagPoseSettings
    from oneposetrans.pose import PoseMaps, load_pose_map, needs_detector, pose_from_photo
    from oneposetrans.report import contact_sheet
    from oneposetrans.results import ResultsTree, check_writable_folder, pair_name, stem

    mode = pick_mode(arguments.mode, len(arguments.source), len(arguments.pose))
    layout(mode, len(arguments.source), len(arguments.pose))  # counts checked before anything loads
    if arguments.source_pose and len(arguments.source_pose) != len(arguments.source):
        raise BadInputError(f"{len(arguments.source)} source photo(s) but {len(arguments.source_pose)} --source-pose file(s)")
    check_writable_folder(arguments.out)
    sources = [load_image(path, "RGB") for path in arguments.source]
    detect = not arguments.source_pose or any(needs_detector(p) for p in [*arguments.pose, *(arguments.source_pose or [])])
    models = models_dir(arguments)
    checkpoint = arguments.checkpoint or Path(models) / registry.spec("imagpose").folder
    # Every missing model in one line, before anything loads.
    registry.require_all(["openpose"] * detect + ["imagpose"] * (arguments.checkpoint is None), models)
    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    session = open_session(arguments, models)
    tree = ResultsTree(arguments.out)
    side = 128 if arguments.smoke and arguments.tile == ImagPoseSettings.tile_long_side else arguments.tile
    settings = ImagPoseSettings(steps=arguments.steps, guidance=arguments.guidance, seed=arguments.seed, tile_long_side=side)
    maps = PoseMaps(tree, "default")
    extractor = lambda: session.pose_extractor  # noqa: E731

    source_poses = []
    for index, (path, picture) in enumerate(zip(arguments.source, sources)):
        save_image(picture, tree.file("images", f"{stem(path)}.png"))
        if arguments.source_pose:
            pose_file = arguments.source_pose[index]
            pose_map = maps.get(f"{stem(path)}.source", lambda: load_pose_map(pose_file, side, extractor))
            _same_frame(pose_file, pose_map, path, picture)
        else:
            pose_map = maps.get(f"{stem(path)}.source", lambda: pose_from_photo(picture, path, side, extractor))
        source_poses.append(_with_person(pose_map, path))
    targets = [_with_person(maps.get(stem(path), lambda: load_pose_map(path, side, extractor)), path) for path in arguments.pose]

    started = time.perf_counter()
    pipeline = ImagPosePipeline.from_pretrained(checkpoint, session.device, session.torch_dtype)
    echo(f"  IMAGPose checkpoint loaded in {time.perf_counter() - started:.1f} s ({checkpoint})")
    started = time.perf_counter()
    output = pipeline(sources, source_poses, targets, mode, settings)
    log = tree.log("imagpose")
    rows = []
    for path, pose_map, image in zip(arguments.pose, targets, output.images):
        result = tree.file("reposed_result", pair_name(stem(arguments.source[0]), stem(path)))
        save_image(image, result)
        log.ok(result.stem, mode=mode, steps=settings.steps, seconds=round(time.perf_counter() - started, 3), size=list(image.size))
        echo(f"  {result.name}")
        rows.append((sources[0], pose_map, image))
    save_image(output.canvas, tree.root / f"canvas_{stem(arguments.source[0])}.png")
    contact_sheet(rows, tree.root / "contact_sheet.png")
    reminder = " (smoke run: the pictures are noise)" if arguments.smoke else ""
    print(f"{len(output.images)} result(s) of mode {mode} in {tree.root / 'reposed_result'}{reminder}")
    return 0


def _with_person(pose_map, path):
    """A pose map with nothing drawn has no person to pose."""
    if max(high for _, high in pose_map.getextrema()) < 16:
        raise BadInputError(f"{path}: the pose has no person (nothing is drawn)")
    return pose_map


def _same_frame(pose_file, pose_map, photo_file, photo) -> None:
    """A source's pose must be drawn in its photo's frame, or the tiles would not line up."""
    pose_ratio, photo_ratio = pose_map.width / pose_map.height, photo.width / photo.height
    if abs(pose_ratio / photo_ratio - 1) > 0.02:
        raise BadInputError(
            f"{pose_file}: its frame {pose_map.width}x{pose_map.height} does not match the source {photo_file} "
            f"({photo.width}x{photo.height})"
        )
