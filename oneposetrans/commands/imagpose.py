"""``python -m oneposetrans imagpose ...``: build an untrained checkpoint, and generate.

``generate`` writes the results tree that every method shares: the sources in ``images/``, the
pose maps in ``poses/``, each result as ``reposed_result/<source>_to_<target>.png`` (so
``evaluate`` scores it as it scores OnePoseTrans), the whole decoded canvas as
``canvas_<source>.png`` for inspection, and ``contact_sheet.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oneposetrans import registry
from oneposetrans.commands import SMOKE_BANNER, add_common, echo, models_dir, open_session
from oneposetrans.datasets import read_keypoints_csv, read_pairs
from oneposetrans.errors import BadInputError
from oneposetrans.image_io import load_image
from oneposetrans.imagpose.canvas import MODES, layout
from oneposetrans.pose import needs_detector, PoseMaps
from oneposetrans.profiles import profile_named
from oneposetrans.report import contact_sheet
from oneposetrans.results import check_writable_folder, ResultsTree, stem
from oneposetrans.settings import ImagPoseSettings

MODE_CHOICES = ("auto", *MODES)


def add(commands) -> None:
    imagpose = commands.add_parser(
        "imagpose",
        help="IMAGPose (NeurIPS 2024): 1->1, 1->N targets and K->1 views in one denoising pass",
        description="The second method: one joint 2x2 canvas per pass. No IMAGPose weights were ever published: "
        "`imagpose init` builds an untrained checkpoint from the stock parts, which training turns into a model.",
    )
    actions = imagpose.add_subparsers(dest="action", required=True, metavar="ACTION")

    init = actions.add_parser(
        "init",
        help="an untrained checkpoint folder from SD1.5, sd-vae-ft-mse, DINOv2 and a motion module "
        "(AnimateDiff v2; --profile reference: Moore-AnimateAnyone's, as published)",
    )
    init.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    init.add_argument(
        "--image-encoder", choices=registry.IMAGPOSE_IMAGE_ENCODERS, default="dinov2-base",
        help="dinov2-base: the published code's (compare with the paper's Table 3 DINOv2-B row); dinov2-giant: the paper's Table 1 model",
    )
    add_common(init, results=False)
    init.set_defaults(handler=_cmd_init)

    generate = actions.add_parser(
        "generate",
        help="the person of the source photo(s) in the target pose(s), one pass",
        description="Modes: t1 [src, -, -, -] (the paper's default), t2 [src x3, -], multi-target (1 source, "
        "up to 3 poses), multi-source (up to 3 views, 1 pose); auto picks t1, multi-target or multi-source "
        "from the counts. Source poses are detected with OpenPose unless --source-pose gives them.",
    )
    generate.add_argument("--source", type=Path, nargs="+", help="photo(s) of one person (up to 3; --smoke: a bundled photo and its pose)")
    generate.add_argument(
        "--pose", type=Path, nargs="+", help="target pose(s): OpenPose JSON, pose map or photo (up to 3; --smoke: a bundled pose)"
    )
    generate.add_argument("--source-pose", type=Path, nargs="+", help="the sources' poses, in the same order (default: detected)")
    generate.add_argument("--checkpoint", type=Path, help="IMAGPose checkpoint folder (default: MODELS/imagpose)")
    generate.add_argument("--out", type=Path, required=True, help="results tree")
    generate.add_argument("--mode", choices=MODE_CHOICES, default="auto", help="how the canvas is filled")
    _add_sampling(generate)
    add_common(generate, results=False)
    generate.set_defaults(handler=_cmd_generate)

    train = actions.add_parser(
        "train",
        help="one training phase (run it under `accelerate launch -m oneposetrans imagpose train ...` for several GPUs)",
        description="Phase 1 trains the UNet, pose encoder and FLC tokenizer from `imagpose init`; phase 2 the cross-view "
        "attention only; phase 3 everything at lr 1e-6. Checkpoints are IMAGPose checkpoint folders "
        "(OUTPUT/checkpoint-<step>, loadable by `imagpose generate --checkpoint`); logs go to OUTPUT/logs/train.jsonl.",
    )
    train.add_argument("--config", required=True, help="config file (YAML), or phase1, phase2, phase3: the bundled ones")
    train.add_argument(
        "--data", type=Path,
        help="DeepFashion root as prepare-deepfashion leaves it: fashion/train_highres/ and fasion-resize-annotation-train.csv "
        "(--smoke: a synthetic mini split, built once in the cache)",
    )
    train.add_argument("--output", type=Path, required=True, help="folder of the checkpoints and logs")
    train.add_argument("--init", type=Path, help="checkpoint folder to start from (default: the config's init; --smoke: the kit's)")
    train.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT", help="continue from the latest checkpoint in --output, or from CHECKPOINT")
    train.add_argument("--max-steps", type=int, help="optimizer steps of the phase (default: the config's)")
    train.add_argument("--batch-size", type=int, help="canvases per process per step")
    train.add_argument("--learning-rate", type=float, help="AdamW learning rate")
    train.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    train.add_argument("--log-every", type=int, help="steps between log lines")
    train.add_argument("--tile", type=int, help="long side of a tile, a multiple of 64 (default 512; --smoke: 128)")
    train.add_argument("--workers", type=int, help="data-loading processes per training process")
    train.add_argument("--seed", type=int, help="seed of the data order, masks, noise and timesteps")
    train.add_argument("--tensorboard", action="store_true", help="also log to OUTPUT/tensorboard (if tensorboard is installed)")
    add_common(train, results=False)
    train.set_defaults(handler=_cmd_train)

    evaluate = actions.add_parser(
        "evaluate",
        help="IMAGPose's DeepFashion protocol: the test pairs in scenarios T1, T2, T3 and multi-target, scored at 256x176 and 512x352",
        description="Generates RESULTS/<scenario>/reposed_result/<src>_to_<tgt>.png for every test pair (resumable, sharded under "
        "accelerate launch), scores each scenario at each size with `evaluate` (RESULTS/<scenario>/evaluation-<size>/) and "
        "gathers the figures beside the paper's in RESULTS/evaluation/imagpose.md.",
    )
    evaluate.add_argument(
        "--data", type=Path,
        help="DeepFashion root: fashion/test_highres (sources and ground truth), fashion/train_highres (FID's real set), "
        "fasion-resize-pairs-test.csv and fasion-resize-annotation-test.csv (--smoke: a synthetic mini split, built once in the cache)",
    )
    evaluate.add_argument("--checkpoint", type=Path, help="IMAGPose checkpoint folder (default: MODELS/imagpose)")
    evaluate.add_argument("--pairs", type=Path, help="pairs list (default: DATA/fasion-resize-pairs-test.csv, the 8,570 pairs)")
    evaluate.add_argument("--keypoints", type=Path, help="test keypoints (default: DATA/fasion-resize-annotation-test.csv)")
    evaluate.add_argument("--real", type=Path, help="FID's real set (default: DATA/fashion/train_highres)")
    evaluate.add_argument("--scenarios", default="t1,t2,t3,multi-target", help="comma-separated: t1, t2, t3, multi-target")
    evaluate.add_argument("--sizes", default="256x176,512x352", help="comma-separated evaluation sizes HEIGHTxWIDTH")
    evaluate.add_argument(
        "--metrics", default="ssim_pcdms,lpips,lpips_pcdms,fid",
        help="comma-separated (any of `evaluate --metrics`); lpips_pcdms is LPIPS as the paper's numbers were computed",
    )
    evaluate.add_argument("--limit", type=int, help="only the first N pairs (a quick check)")
    _add_sampling(evaluate)
    add_common(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    defaults = ImagPoseSettings()
    parser.add_argument("--denoise-steps", "--steps", dest="steps", type=int, default=defaults.steps, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=defaults.guidance, help="classifier-free guidance on the FLC tokens")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="sampling seed")
    parser.add_argument("--tile", type=int, default=defaults.tile_long_side, help="long side of a tile, a multiple of 64 (--smoke: 128)")


def pick_mode(mode: str, sources: int, targets: int) -> str:
    if mode != "auto":
        return mode
    if sources > 1 and targets > 1:
        raise BadInputError(f"{sources} sources and {targets} target poses: one pass takes several sources or several targets, not both")
    return "multi-source" if sources > 1 else "multi-target" if targets > 1 else "t1"


def _cmd_init(arguments: argparse.Namespace) -> int:
    from oneposetrans.imagpose.checkpoint import initialise, stock_parts

    profile = profile_named(arguments.profile)
    models = models_dir(arguments)
    registry.require_all(stock_parts(profile, arguments.image_encoder), models)
    folder = initialise(models, arguments.out, profile, image_encoder=arguments.image_encoder)
    print(f"untrained IMAGPose checkpoint written to {folder}")
    return 0


def _cmd_generate(arguments: argparse.Namespace) -> int:
    from oneposetrans.imagpose.generate import GenerateCase, GenerateStage, bundled_source, check_pose_files
    from oneposetrans.pose import BUNDLED_POSES
    from oneposetrans.recipe import Recipe

    if arguments.smoke and not arguments.source:
        # The bundled photo in the bundled poses' 2:3 frame, posed by the first of them.
        arguments.source, arguments.source_pose = [bundled_source()], [BUNDLED_POSES[0]]
    if arguments.smoke and not arguments.pose:
        arguments.pose = [BUNDLED_POSES[-1]]
    if not arguments.source or not arguments.pose:
        raise BadInputError("imagpose generate needs --source PHOTO ... and --pose POSE ... (or --smoke, which brings its own)")
    mode = pick_mode(arguments.mode, len(arguments.source), len(arguments.pose))
    layout(mode, len(arguments.source), len(arguments.pose))  # counts checked before anything loads
    if arguments.source_pose and len(arguments.source_pose) != len(arguments.source):
        raise BadInputError(f"{len(arguments.source)} source photo(s) but {len(arguments.source_pose)} --source-pose file(s)")
    check_writable_folder(arguments.out)
    sources = [load_image(path, "RGB") for path in arguments.source]
    check_pose_files(arguments.source, arguments.source_pose, arguments.pose)
    detect = not arguments.source_pose or any(needs_detector(p) for p in [*arguments.pose, *(arguments.source_pose or [])])
    models = models_dir(arguments)
    checkpoint = arguments.checkpoint or Path(models) / registry.spec("imagpose").folder
    side = 128 if arguments.smoke and arguments.tile == ImagPoseSettings.tile_long_side else arguments.tile
    settings = ImagPoseSettings(steps=arguments.steps, guidance=arguments.guidance, seed=arguments.seed, tile_long_side=side)
    case = GenerateCase(tuple(arguments.source), tuple(arguments.pose), tuple(arguments.source_pose) if arguments.source_pose else None, mode)
    session = open_session(arguments, models)
    # Every missing model in one line, before anything is written or loads.
    planned = ResultsTree(arguments.out, create=False)
    Recipe(planned, session).require([GenerateStage(planned, checkpoint, settings, detect)])
    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    tree = ResultsTree(arguments.out)
    stage = GenerateStage(tree, checkpoint, settings, detect)
    Recipe(tree, session, echo=echo, progress=not arguments.quiet).run(stage, [case])
    maps = PoseMaps(tree, session.profile)
    results = stage.outputs(case)
    rows = [(sources[0], load_image(maps.path(stem(pose)), "RGB"), load_image(result)) for pose, result in zip(arguments.pose, results)]
    contact_sheet(rows, tree.root / "contact_sheet.png")
    reminder = " (smoke run: the pictures are noise)" if arguments.smoke else ""
    print(f"{len(results)} result(s) of mode {mode} in {tree.root / 'reposed_result'}{reminder}")
    return 0


def _cmd_train(arguments: argparse.Namespace) -> int:
    from oneposetrans.imagpose.train import ImagPoseTrainer, checkpoints, load_config

    if arguments.data is None and arguments.smoke:
        from oneposetrans.testing.mini_dataset import cached_mini_deepfashion

        arguments.data = cached_mini_deepfashion()
    if arguments.data is None:
        raise BadInputError("imagpose train needs --data DIR (the DeepFashion root), or --smoke for a synthetic mini split")
    models = models_dir(arguments)
    smoke_tile = 128 if arguments.smoke and arguments.tile is None else arguments.tile
    config = load_config(
        arguments.config, init=str(arguments.init) if arguments.init else None, max_steps=arguments.max_steps,
        batch_size=arguments.batch_size, learning_rate=arguments.learning_rate, checkpoint_every=arguments.checkpoint_every,
        log_every=arguments.log_every, tile_long_side=smoke_tile, workers=arguments.workers, seed=arguments.seed,
    )
    if config.init is None and arguments.smoke:
        config.init = str(registry.require("imagpose", models))
    done = checkpoints(arguments.output) if arguments.output.is_dir() else []
    resume = None
    if arguments.resume == "latest":
        resume = done[-1] if done else None
        if resume is None:
            echo(f"no checkpoint in {arguments.output} yet: starting at step 0")
    elif arguments.resume:
        resume = Path(arguments.resume)
        if not (resume / "training_state.pt").is_file():
            raise BadInputError(f"{resume}: not a training checkpoint (no training_state.pt)")
    elif done:
        raise BadInputError(f"{arguments.output} already has {done[-1].name}: pass --resume to continue it, or choose another --output")
    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    trainer = ImagPoseTrainer(
        config, arguments.data, arguments.output, resume, cpu=arguments.device == "cpu", tensorboard=arguments.tensorboard, echo=echo,
        profile=profile_named(arguments.profile),
    )
    last = trainer.train()
    if trainer.accelerator.is_main_process:
        print(f"phase {config.phase} at step {trainer.step}: {last}")
    return 0


def _cmd_evaluate(arguments: argparse.Namespace) -> int:
    from oneposetrans.evaluate import parse_metrics, parse_size
    from oneposetrans.imagpose.evaluate import SCENARIOS, ProtocolRequest, default_paths, protocol_table, run_protocol

    if arguments.data is None and arguments.smoke:
        from oneposetrans.testing.mini_dataset import cached_mini_deepfashion

        arguments.data = cached_mini_deepfashion()
    if arguments.data is None:
        raise BadInputError("imagpose evaluate needs --data DIR (the DeepFashion root), or --smoke for a synthetic mini split")
    paths = default_paths(arguments.data)
    scenarios = tuple(s.strip() for s in arguments.scenarios.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise BadInputError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    sizes = tuple(s.strip() for s in arguments.sizes.split(",") if s.strip())
    for size in sizes:
        if parse_size(size) is None:
            raise BadInputError(f"--sizes {size}: the protocol scores at fixed sizes (HEIGHTxWIDTH)")
    pairs = read_pairs(arguments.pairs or paths["pairs"])[: arguments.limit]
    keypoints = read_keypoints_csv(arguments.keypoints or paths["keypoints"])
    models = models_dir(arguments)
    checkpoint = arguments.checkpoint or Path(models) / registry.spec("imagpose").folder
    registry.require_all(["imagpose"] * (arguments.checkpoint is None), models)
    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    side = 128 if arguments.smoke and arguments.tile == ImagPoseSettings.tile_long_side else arguments.tile
    request = ProtocolRequest(
        checkpoint=checkpoint, photos=paths["photos"], pairs=pairs, keypoints=keypoints, results=arguments.results,
        real=arguments.real or paths["real"], models=models, scenarios=scenarios, sizes=sizes,
        metrics=parse_metrics(arguments.metrics),
        settings=ImagPoseSettings(steps=arguments.steps, guidance=arguments.guidance, seed=arguments.seed, tile_long_side=side),
        smoke=arguments.smoke,
    )
    session = open_session(arguments, models)
    table = run_protocol(request, session, echo, progress=not arguments.quiet)
    if session.is_main_process:
        print(protocol_table(table, request.metrics), end="")
        print(f"tables: {arguments.results / 'evaluation' / 'imagpose.md'}")
    return 0
