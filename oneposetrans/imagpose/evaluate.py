"""IMAGPose's evaluation protocol on DeepFashion: the test pairs generated in each scenario,
scored by the project's metric code.

The scenarios (the paper's Fig. 7 and 8, Table 1):

* ``t1``: [source, -, -, -] with the target pose on the three empty tiles; the result is the
  first of the three (the paper picked one at random). Table 1's numbers are T1.
* ``t2``: [source x3, -].
* ``t3``: [v1, v2, v3, -]: the source and up to two other test photos of the same outfit (never
  the target), by name order; a pair whose outfit has no other photo runs with its source alone.
* ``multi-target``: [source, -, -, -] with up to three of the source's targets in one pass.

Each scenario writes its own results tree (``RESULTS/<scenario>/reposed_result/<src>_to_<tgt>.png``)
and is scored at each size by :func:`oneposetrans.evaluate.evaluate`, which writes its usual
``metrics.json``, ``metrics.md`` and ``report.html`` under ``RESULTS/<scenario>/evaluation-<size>/``;
``RESULTS/evaluation/imagpose.json`` and ``imagpose.md`` gather them beside the paper's numbers.
The metrics are the protocol's (PCDMs' scripts, to which IMAGPose points): SSIM with the
sigma-1.2 Gaussian window (``ssim_pcdms``), LPIPS (AlexNet) both ours and as PCDMs' script
computes it (``lpips_pcdms``, the one the paper's numbers came from), FID against the training
photos. The paper's Table 1 used DINOv2-G; the DINOv2-B row of its Table 3 is the one a model of
the published code (DINOv2-B) should be compared with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from oneposetrans.errors import BadInputError, CaseFailures
from oneposetrans.evaluate import SMOKE_WARNING, evaluate, EvaluationRequest
from oneposetrans.image_io import load_image, save_image
from oneposetrans.imagpose import canvas as joint
from oneposetrans.imagpose.data import draw_pose, identity_of
from oneposetrans.imagpose.generate import checkpoint_models, sample
from oneposetrans.pose import DEEPFASHION_FRAME
from oneposetrans.results import ResultsTree, pair_name, stem, write_json_atomic, write_text_atomic
from oneposetrans.settings import ImagPoseSettings
from oneposetrans.stages import Stage, run_stage

SCENARIOS = {"t1": "t1", "t2": "t2", "t3": "multi-source", "multi-target": "multi-target"}
"""The protocol's scenarios and the pipeline mode each runs."""
SIZES = ("256x176", "512x352")
METRICS = ("ssim_pcdms", "lpips", "lpips_pcdms", "fid")
PAPER = {
    ("t1", "256x176"): {
        # The like-for-like target: the published code's encoder, DINOv2-B.
        "DINOv2-B, Table 3": {"ssim_pcdms": 0.7541, "lpips_pcdms": 0.1343, "fid": 5.9286},
        "DINOv2-G, Table 1": {"ssim_pcdms": 0.7561, "lpips_pcdms": 0.1284, "fid": 5.8738},
    },
    ("t1", "512x352"): {"DINOv2-G, Table 1": {"ssim_pcdms": 0.7718, "lpips_pcdms": 0.1396, "fid": 5.6298}},
    # The paper gives T3's figures in its text without a size; 256x176 is its main table's.
    ("t3", "256x176"): {"DINOv2-G, text": {"ssim_pcdms": 0.7727, "lpips_pcdms": 0.1172, "fid": 5.3286}},
}
"""IMAGPose's published DeepFashion figures, by (scenario, size) and row. The paper's model used
DINOv2-G (Table 1); the published code, and so a model trained with it or with this project,
DINOv2-B, whose row is Table 3's. Its LPIPS came from PCDMs' script (issue #3 of the published
code sends users there), so it sits under ``lpips_pcdms``."""


@dataclass(frozen=True)
class ProtocolPass:
    """One denoising pass: the source photo(s) and the target(s), by file name."""

    scenario: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]


def plan(scenario: str, pairs: list[tuple[str, str]], photos: list[str]) -> list[ProtocolPass]:
    """The passes of ``scenario`` over ``pairs``; ``photos`` are the test photos' names (for
    the other views of T3)."""
    if scenario not in SCENARIOS:
        raise BadInputError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    if scenario == "multi-target":
        by_source: dict[str, list[str]] = {}
        for source, target in pairs:
            by_source.setdefault(source, []).append(target)
        return [
            ProtocolPass(scenario, (source,), tuple(targets[i : i + 3]))
            for source, targets in by_source.items()
            for i in range(0, len(targets), 3)
        ]
    if scenario == "t3":
        outfits: dict[str, list[str]] = {}
        for name in sorted(photos):
            outfits.setdefault(identity_of(stem(name)), []).append(name)
        passes = []
        for source, target in pairs:
            others = [name for name in outfits.get(identity_of(stem(source)), []) if stem(name) not in (stem(source), stem(target))]
            passes.append(ProtocolPass(scenario, (source, *others[:2]), (target,)))
        return passes
    return [ProtocolPass(scenario, (source,), (target,)) for source, target in pairs]


class ProtocolStage(Stage[ProtocolPass]):
    """Generates one scenario's passes into its results tree; finished passes are skipped."""

    name = "imagpose"
    unit = "pass"

    def __init__(self, tree: ResultsTree, photos: Path, keypoints: dict[str, np.ndarray], checkpoint: Path, settings: ImagPoseSettings):
        self.tree, self.photos, self.keypoints = tree, photos, keypoints
        self.checkpoint, self.settings = checkpoint, settings
        self.tile = joint.tile_size(*DEEPFASHION_FRAME, settings.tile_long_side)

    def models(self, session) -> list[str]:
        return checkpoint_models(session, self.checkpoint)

    def case_name(self, case: ProtocolPass) -> str:
        return f"{stem(case.sources[0])}->{'+'.join(stem(t) for t in case.targets)}"

    def outputs(self, case: ProtocolPass) -> list[Path]:
        return [self.tree.file("reposed_result", pair_name(case.sources[0], target)) for target in case.targets]

    def _points(self, name: str) -> np.ndarray:
        if stem(name) not in self.keypoints:
            raise BadInputError(f"{name}: no keypoints in the test annotations")
        return self.keypoints[stem(name)]

    def run(self, case: ProtocolPass, session, log) -> None:
        sources = []
        for name in case.sources:
            if not (self.photos / name).is_file():
                raise BadInputError(f"{self.photos / name}: no such test photo")
            sources.append(load_image(self.photos / name, "RGB"))
        source_poses = [draw_pose(self._points(name), joint.fitted_size(photo.size, self.tile)) for name, photo in zip(case.sources, sources)]
        target_size = joint.fitted_size(DEEPFASHION_FRAME, self.tile)
        targets = [draw_pose(self._points(name), target_size) for name in case.targets]
        output = sample(session, self.checkpoint, sources, source_poses, targets, SCENARIOS[case.scenario], self.settings)
        for path, image in zip(self.outputs(case), output.images):
            save_image(image, path)
        log.ok(self.case_name(case), scenario=case.scenario, sources=len(case.sources), targets=len(case.targets))


@dataclass
class ProtocolRequest:
    checkpoint: Path
    photos: Path
    """The test photos (``fashion/test_highres``): sources and ground truth."""
    pairs: list[tuple[str, str]]
    keypoints: dict[str, np.ndarray]
    results: Path
    real: Path
    """FID's real set: the training photos."""
    models: Path
    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    sizes: tuple[str, ...] = SIZES
    metrics: tuple[str, ...] = METRICS
    settings: ImagPoseSettings = field(default_factory=ImagPoseSettings)
    smoke: bool = False
    """Tiny-kit models: every table says its numbers mean nothing."""


def run_protocol(request: ProtocolRequest, session, echo: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Generate every scenario (this process's share of its passes), then, on the main process,
    score each at each size; returns {scenario: {size: summary}}. Failed passes are reported
    and the others go on; :class:`CaseFailures` is raised at the end if any failed."""
    photos = sorted(p.name for p in request.photos.iterdir()) if request.photos.is_dir() else []
    if not photos:
        raise BadInputError(f"{request.photos}: no test photos")
    failures: list[str] = []
    for scenario in request.scenarios:
        tree = ResultsTree(request.results / scenario)
        stage = ProtocolStage(tree, request.photos, request.keypoints, request.checkpoint, request.settings)
        echo(f"{scenario}: generating")
        try:
            run_stage(stage, plan(scenario, request.pairs, photos), session, tree.log(stage.name), echo, progress)
        except CaseFailures as error:
            failures += error.reasons
    session.wait_for_everyone()
    table: dict[str, dict[str, dict]] = {}
    shared: dict = {}  # metric backbones and the real set's features, once for all scenarios
    if session.is_main_process:
        for scenario in request.scenarios:
            for size in request.sizes:
                echo(f"{scenario} at {size}: scoring")
                summary = evaluate(
                    EvaluationRequest(
                        results=request.results / scenario, ground_truth=request.photos, models=request.models, folder="reposed_result",
                        size=size, metrics=request.metrics, real=request.real, device=str(session.device),
                        out=request.results / scenario / f"evaluation-{size}", smoke=request.smoke,
                    ),
                    echo=echo,
                    shared=shared,
                )
                table.setdefault(scenario, {})[size] = summary
        out = request.results / "evaluation"
        record = {"ours": table, "paper": {f"{s} {z}": rows for (s, z), rows in PAPER.items()}}
        write_json_atomic(out / "imagpose.json", {**record, **({"warning": SMOKE_WARNING} if request.smoke else {})})
        write_text_atomic(out / "imagpose.md", protocol_table(table, request.metrics))
    if failures:
        raise CaseFailures(f"{len(failures)} pass(es) failed (first: {failures[0]})", failures)
    return table


def protocol_table(table: dict[str, dict[str, dict]], metrics: tuple[str, ...] = METRICS) -> str:
    """Markdown: one row per scenario and size, ours, then the paper's where it gives them."""
    lines = ["| scenario | size | pairs | " + " | ".join(metrics) + " |", "|---" * (3 + len(metrics)) + "|"]
    for scenario, sizes in table.items():
        for size, summary in sizes.items():
            values = [f"{summary[m]:.4f}" if m in summary else "-" for m in metrics]
            lines.append(f"| {scenario} | {size} | {summary.get('pairs', '-')} | " + " | ".join(values) + " |")
            for label, paper in PAPER.get((scenario, size), {}).items():
                values = [f"{paper[m]:.4f}" if m in paper else "-" for m in metrics]
                lines.append(f"| {scenario} (paper, {label}) | {size} | 8570 | " + " | ".join(values) + " |")
    if any("warning" in summary for sizes in table.values() for summary in sizes.values()):
        lines.append(f"\n**{SMOKE_WARNING}**")
    return "\n".join(lines) + "\n"


def default_paths(data: str | os.PathLike) -> dict[str, Path]:
    """Where ``prepare-deepfashion`` and DPTN's release leave the test split under ``data``."""
    data = Path(data)
    return {
        "photos": data / "fashion" / "test_highres",
        "real": data / "fashion" / "train_highres",
        "pairs": data / "fasion-resize-pairs-test.csv",
        "keypoints": data / "fasion-resize-annotation-test.csv",
    }
