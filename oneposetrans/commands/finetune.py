"""`finetune`: per-image LoRA fine-tuning, one photo or a dataset's sources."""

from __future__ import annotations

import argparse
from pathlib import Path

from oneposetrans.caption import CaptionStore
from oneposetrans.commands import SMOKE_BANNER, add_common, echo, models_dir, open_session
from oneposetrans.datasets import read_captions, read_pairs, unique_sources
from oneposetrans.errors import BadInputError
from oneposetrans.profiles import profile_named
from oneposetrans.results import ResultsTree, stem
from oneposetrans.settings import FinetuneSettings


def add(commands) -> None:
    defaults = FinetuneSettings()
    finetune = commands.add_parser(
        "finetune",
        help="per-image LoRA fine-tuning (one LoRA per source, or one from several views)",
        description=(
            "In-the-wild: --source IMG [IMG ...] --caption TEXT trains one LoRA from one or several photos "
            "of the same person. Datasets: --dataset NAME --pairs FILE trains one LoRA per source image the "
            "pairs list needs, reading RESULTS/images/<stem>.png. LoRAs go to RESULTS/lora/<name>.safetensors; "
            "existing ones are skipped. Under `accelerate launch` the cases are shared among the processes."
        ),
    )
    finetune.add_argument("--source", type=Path, nargs="+", help="photo(s) of one person: one LoRA from all of them")
    finetune.add_argument("--caption", help='caption of the person, "A man/woman with face, ..."')
    finetune.add_argument("--name", help="LoRA name for --source (default: stem of the first photo)")
    finetune.add_argument("--mask", type=Path, nargs="+", default=[], help="person masks for --source, in the same order (for --masked-loss)")
    finetune.add_argument("--dataset", choices=("deepfashion", "wpose"), help="dataset adapter for --pairs")
    finetune.add_argument("--pairs", type=Path, help="pairs list: DeepFashion CSV 'from,to', subset 'idx/src/tgt', or WPose 'src tgt'")
    finetune.add_argument(
        "--captions", type=Path, help="captions file 'index/name/text' (default: RESULTS/captions/captions.jsonl)"
    )
    finetune.add_argument("--overwrite", action="store_true", help="retrain LoRAs that already exist")
    finetune.add_argument("--fail-fast", action="store_true", help="stop at the first failed case")
    finetune.add_argument("--rank", type=int, default=defaults.rank, help="LoRA rank")
    finetune.add_argument("--alpha", type=int, default=defaults.alpha, help="LoRA alpha (scale = alpha / rank)")
    finetune.add_argument("--target-modules", nargs="+", default=list(defaults.target_modules), help="attention Linears to adapt")
    finetune.add_argument("--steps", "--finetune-steps", dest="steps", type=int, default=defaults.steps, help="optimisation steps per LoRA")
    finetune.add_argument("--batch-size", type=int, default=defaults.batch_size, help="crops per step")
    finetune.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="AdamW learning rate (constant)")
    finetune.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay")
    finetune.add_argument("--adam-beta1", type=float, default=defaults.adam_beta1, help="AdamW beta1")
    finetune.add_argument("--adam-beta2", type=float, default=defaults.adam_beta2, help="AdamW beta2")
    finetune.add_argument("--adam-epsilon", type=float, default=defaults.adam_epsilon, help="AdamW epsilon")
    finetune.add_argument("--resolution", type=int, default=defaults.resolution, help="shorter-side resize and square random crop size")
    finetune.add_argument("--seed", type=int, default=defaults.seed, help="seed, reset at the start of every LoRA")
    finetune.add_argument(
        "--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default="auto",
        help="auto: none on a CPU; on a GPU fp16 as published, bf16 for the default profile's fast step where the GPU has it",
    )
    finetune.add_argument(
        "--no-cuda-graph", dest="cuda_graph", action="store_false",
        help="run the fast step eagerly instead of replaying one captured CUDA graph (GPU, bf16/fp32, default profile)",
    )
    finetune.add_argument("--masked-loss", action="store_true", help="weight the loss by the person mask (default profile option)")
    add_common(finetune)
    finetune.set_defaults(handler=handle)


def _finetune_cases(arguments: argparse.Namespace, tree) -> list:
    from oneposetrans.finetune import FinetuneCase

    if arguments.source:
        if not arguments.caption:
            raise BadInputError("--source needs --caption \"A man/woman with face, ...\"")
        name = arguments.name or stem(arguments.source[0])
        return [FinetuneCase(name, list(arguments.source), arguments.caption, list(arguments.mask))]
    if not arguments.pairs:
        raise BadInputError("finetune needs --source IMG ... --caption TEXT, or --pairs FILE for a dataset")
    captions = read_captions(arguments.captions, profile_named(arguments.profile)) if arguments.captions else None
    store = CaptionStore(tree)
    stored = {} if captions is not None else store.records()
    where = arguments.captions or store.path
    cases = []
    for source in unique_sources(read_pairs(arguments.pairs)):
        name = stem(source)
        caption = captions.get(name) if captions is not None else stored.get(name, {}).get("caption")
        cases.append(
            FinetuneCase(
                name,
                [tree.file("images", f"{name}.png")],
                caption,
                [tree.file("images_mask", f"{name}.png")],
                problem=None if caption else f"{source}: no caption in {where}",
            )
        )
    return cases


def handle(arguments: argparse.Namespace) -> int:
    from oneposetrans.recipe import Recipe

    if arguments.smoke:
        print(SMOKE_BANNER, flush=True)
    # Inputs and models are checked before the results tree is touched.
    planned = ResultsTree(arguments.results, create=False)
    settings = FinetuneSettings(
        rank=arguments.rank,
        alpha=arguments.alpha,
        target_modules=tuple(arguments.target_modules),
        steps=arguments.steps,
        batch_size=arguments.batch_size,
        learning_rate=arguments.learning_rate,
        weight_decay=arguments.weight_decay,
        adam_beta1=arguments.adam_beta1,
        adam_beta2=arguments.adam_beta2,
        adam_epsilon=arguments.adam_epsilon,
        resolution=arguments.resolution,
        seed=arguments.seed,
        mixed_precision=arguments.mixed_precision,
        masked_loss=arguments.masked_loss,
        cuda_graph=arguments.cuda_graph,
    )
    cases = _finetune_cases(arguments, planned)
    session = open_session(arguments, models_dir(arguments))
    check = Recipe(planned, session, finetune=settings)
    check.require([check.finetune_stage()])
    recipe = Recipe(
        ResultsTree(arguments.results), session, finetune=settings, echo=echo, progress=not arguments.quiet,
        overwrite=arguments.overwrite, fail_fast=arguments.fail_fast,
    )
    recipe.finetune(cases)
    return 0
