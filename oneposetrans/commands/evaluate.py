"""`evaluate`: the field's metrics (oneposetrans.evaluate)."""

from __future__ import annotations

import argparse
from pathlib import Path

from oneposetrans.commands import add_common, models_dir
from oneposetrans.settings import ALL_METRICS


def add(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="SSIM (the community variants), PSNR, LPIPS (ours and as PCDMs' script), FID (community and standard), masked metrics, face identity",
        description=(
            "Scores RESULTS/<folder>/<source>_to_<target>.png against GROUND_TRUTH/<target>.(png|jpg) at the "
            "field's evaluation size. Writes RESULTS/evaluation/metrics.json (summary and per pair), metrics.md "
            "(a table for a paper or README) and report.html (histograms, best and worst cases). Backbones come "
            "from the models folder: lpips-alex, fid-inception, fid-inception-tf, antelopev2."
        ),
    )
    evaluate.add_argument("--ground-truth", type=Path, required=True, help="folder of the target images")
    evaluate.add_argument("--folder", default="reposed_final_result", help="results folder to score (e.g. refined_final_result)")
    evaluate.add_argument(
        "--size",
        default="256x176",
        help="evaluation size HEIGHTxWIDTH (the field's DeepFashion sizes: 256x176, 512x352), or 'native': "
        "each pair at its ground truth's own frame, as for WPose (default: 256x176)",
    )
    evaluate.add_argument("--metrics", default=",".join(ALL_METRICS), help="comma-separated subset")
    evaluate.add_argument("--real", type=Path, help="FID real set: the training images (default: --ground-truth)")
    evaluate.add_argument("--batch-size", type=int, default=16, help="images per batch")
    evaluate.add_argument("--out", type=Path, help="report folder (default: RESULTS/evaluation)")
    add_common(evaluate)
    evaluate.set_defaults(handler=handle)


def handle(arguments: argparse.Namespace) -> int:
    from oneposetrans.evaluate import EvaluationRequest, evaluate, markdown_table, parse_metrics

    request = EvaluationRequest(
        results=arguments.results,
        ground_truth=arguments.ground_truth,
        models=models_dir(arguments, tiny_work=False),
        folder=arguments.folder,
        size=arguments.size,
        metrics=parse_metrics(arguments.metrics),
        real=arguments.real,
        batch_size=arguments.batch_size,
        device=arguments.device,
        out=arguments.out,
        smoke=arguments.smoke,
    )
    summary = evaluate(request, echo=lambda line: print(line, flush=True))
    print(markdown_table(summary), end="")
    print(f"report: {(request.out or request.results / 'evaluation') / 'report.html'}")
    return 0
