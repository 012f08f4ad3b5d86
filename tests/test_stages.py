"""The one stage driver and the session every flow shares."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from oneposetrans.errors import BadInputError, CaseFailures, MissingModelError
from oneposetrans.profiles import DEFAULT
from oneposetrans.results import ResultsTree
from oneposetrans.session import Session
from oneposetrans.stages import Done, Stage, run_stage


class Numbers(Stage[int]):
    """Writes ``<n>.txt``; refuses the numbers in ``bad``."""

    name = "numbers"

    def __init__(self, folder: Path, bad=(), missing_model=False):
        self.folder, self.bad, self.missing_model, self.ran = folder, set(bad), missing_model, []

    def case_name(self, case: int) -> str:
        return str(case)

    def outputs(self, case: int) -> list[Path]:
        return [self.folder / f"{case}.txt"]

    def run(self, case: int, session, log) -> Done:
        self.ran.append(case)
        if self.missing_model:
            raise MissingModelError("missing model 'x'")
        if case in self.bad:
            raise BadInputError(f"{case}: bad")
        (self.folder / f"{case}.txt").write_text(str(case))
        log.ok(str(case))
        return Done(f"{case} written", notes=["odd"] * (case % 2), conditioning=f"number {case}")


def _session(index=0, count=1):
    waits = []
    return SimpleNamespace(
        shard=lambda cases: list(cases[index::count]), is_main_process=index == 0, prefix="",
        wait_for_everyone=lambda: waits.append(1), waits=waits,
    )


def _records(tree):
    return [json.loads(line) for line in (tree.root / "logs" / "numbers.jsonl").read_text().splitlines()]


def test_skips_finished_cases_logs_failures_and_goes_on(tmp_path):
    tree = ResultsTree(tmp_path / "r")
    (tmp_path / "2.txt").write_text("2")
    stage = Numbers(tmp_path, bad={3})
    lines = []
    with pytest.raises(CaseFailures, match="1 done, 1 skipped, 1 failed.*first: 3: bad") as raised:
        run_stage(stage, [1, 2, 3], _session(), tree.log("numbers"), lines.append, progress=False)
    assert raised.value.reasons == ["3: bad"]
    assert stage.ran == [1, 3] and (tmp_path / "1.txt").exists()
    assert [(r["case"], r["status"]) for r in _records(tree)] == [("2", "skipped"), ("1", "done"), ("3", "failed")]
    assert "failed: 3: bad" in lines and any(line.startswith("[1/2] 1 written") for line in lines)


def test_the_report_collects_what_each_case_did(tmp_path):
    tree = ResultsTree(tmp_path / "r")
    (tmp_path / "4.txt").write_text("4")
    report = run_stage(Numbers(tmp_path), [1, 2, 3, 4], _session(), tree.log("numbers"), lambda _: None, progress=False)
    assert (report.done, report.skipped, report.failed) == (3, 1, 0)
    assert [case.line for case in report.cases] == ["1 written", "2 written", "3 written"]
    assert report.notes == ["odd"] and report.conditioning == "number 3"


def test_a_stage_needs_the_registry_models_of_its_name_and_says_so_before_a_flow_starts(tmp_path):
    """Stages declare their models; a flow checks the union before its first step."""
    from oneposetrans import registry
    from oneposetrans.recipe import Recipe

    session = SimpleNamespace(profile=DEFAULT, identitynet=False, inpainter_kind="lama", models=tmp_path / "models")
    recipe = Recipe(ResultsTree(tmp_path / "r", create=False), session)
    assert recipe.segment_stage().models(session) == ["grounding-dino", "sam"] == registry.stage_models("segment")
    assert recipe.finetune_stage().models(session) == ["sdxl-base"]
    assert recipe.inpaint_stage().models(session) == ["lama"]
    assert recipe.paste_stage("reposed").models(session) == [] and recipe.caption_stage().models(session) == []
    generate = recipe.generate_stage(None, detects_poses=True)
    assert generate.models(session) == [*registry.stage_models("repose"), "openpose"]
    assert recipe.refine_stage({}).models(session) == registry.stage_models("repose")
    with pytest.raises(MissingModelError, match="models missing .*: grounding-dino, sam, lama"):
        recipe.require([recipe.segment_stage(), recipe.inpaint_stage(), recipe.paste_stage("reposed")])
    assert not (tmp_path / "r").exists()  # planned without touching the disk


def test_overwrite_redoes_finished_cases_and_fail_fast_stops(tmp_path):
    tree = ResultsTree(tmp_path / "r")
    (tmp_path / "1.txt").write_text("old")
    stage = Numbers(tmp_path, bad={1})
    stage.overwrite = True
    with pytest.raises(CaseFailures):
        run_stage(stage, [1, 2], _session(), tree.log("numbers"), lambda _: None, progress=False, fail_fast=True)
    assert stage.ran == [1]


def test_a_missing_model_stops_the_stage_at_once(tmp_path):
    stage = Numbers(tmp_path, missing_model=True)
    with pytest.raises(MissingModelError):
        run_stage(stage, [1, 2], _session(), ResultsTree(tmp_path / "r").log("numbers"), lambda _: None, progress=False)
    assert stage.ran == [1]


def test_processes_take_disjoint_shares_and_an_unshardable_stage_runs_on_the_main_one(tmp_path):
    tree = ResultsTree(tmp_path / "r")
    first, second = Numbers(tmp_path), Numbers(tmp_path)
    run_stage(first, [1, 2, 3, 4, 5], _session(0, 2), tree.log("numbers"), lambda _: None, progress=False)
    run_stage(second, [1, 2, 3, 4, 5], _session(1, 2), tree.log("numbers"), lambda _: None, progress=False)
    assert first.ran == [1, 3, 5] and second.ran == [2, 4]

    single = Numbers(tmp_path / "single")
    single.folder.mkdir()
    single.shardable = False
    other = _session(1, 2)
    assert run_stage(single, [1, 2], other, tree.log("numbers"), lambda _: None, progress=False).done == 0
    assert single.ran == [] and other.waits == [1]
    main = _session(0, 2)
    run_stage(single, [1, 2], main, tree.log("numbers"), lambda _: None, progress=False)
    assert single.ran == [1, 2] and main.waits == [1]


def test_every_loader_receives_a_resolved_device_and_loads_once(monkeypatch, tmp_path):
    """``--device auto`` reaches no loader: the session resolves it once (here: no GPU, so cpu)."""
    import torch

    from oneposetrans import session as session_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen = []

    def recorder(kind):
        def build(*arguments, **keywords):
            devices = [a for a in (*arguments, *keywords.values()) if isinstance(a, (str, torch.device)) and str(a) in ("auto", "cpu", "cuda")]
            seen.append((kind, [str(d) for d in devices]))
            return SimpleNamespace(pipe=None, profile=DEFAULT)

        return build

    monkeypatch.setattr(session_module, "PersonSegmenter", recorder("segmenter"))
    monkeypatch.setattr(session_module, "Generator", recorder("generator"))
    monkeypatch.setattr(session_module, "make_inpainter", recorder("inpainter"))
    monkeypatch.setattr(session_module, "PoseExtractor", recorder("pose"))
    monkeypatch.setattr(session_module, "automatic_captioner", recorder("captioner"))
    monkeypatch.setattr(session_module.LoraTrainer, "from_models_dir", recorder("trainer"))
    session = Session(tmp_path, "auto", "auto", echo=lambda _: None)
    assert str(session.device) == "cpu" and session.dtype == "fp32"
    for _ in range(2):
        session.segmenter, session.generator, session.inpainter, session.pose_extractor, session.captioner
        session.trainer(session_module.FinetuneSettings())
    assert [kind for kind, _ in seen] == ["segmenter", "generator", "inpainter", "pose", "captioner", "trainer"]
    assert all(devices == ["cpu"] for _, devices in seen), seen
