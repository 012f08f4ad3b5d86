"""The one stage driver and the session every flow shares."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from oneposetrans.errors import BadInputError, CaseFailures, MissingModelError
from oneposetrans.profiles import DEFAULT
from oneposetrans.results import ResultsTree
from oneposetrans.session import Session
from oneposetrans.stages import Stage, run_stage


class Numbers(Stage[int]):
    """Writes ``<n>.txt``; refuses the numbers in ``bad``."""

    name = "numbers"

    def __init__(self, folder: Path, bad=(), missing_model=False):
        self.folder, self.bad, self.missing_model, self.ran = folder, set(bad), missing_model, []

    def case_name(self, case: int) -> str:
        return str(case)

    def outputs(self, case: int) -> list[Path]:
        return [self.folder / f"{case}.txt"]

    def run(self, case: int, session, log) -> str:
        self.ran.append(case)
        if self.missing_model:
            raise MissingModelError("missing model 'x'")
        if case in self.bad:
            raise BadInputError(f"{case}: bad")
        (self.folder / f"{case}.txt").write_text(str(case))
        log.ok(str(case))
        return f"{case} written"


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
    assert run_stage(single, [1, 2], other, tree.log("numbers"), lambda _: None, progress=False)["done"] == 0
    assert single.ran == [] and other.waits == [1]
    main = _session(0, 2)
    run_stage(single, [1, 2], main, tree.log("numbers"), lambda _: None, progress=False)
    assert single.ran == [1, 2] and main.waits == [1]


def test_every_loader_receives_a_resolved_device_and_loads_once(monkeypatch, tmp_path):
    """``--device auto`` reaches no loader: the session resolves it once (here: no GPU, so cpu)."""
    import torch

    from oneposetrans import caption, finetune, generator, inpaint, pose, segment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen = []

    def recorder(kind):
        def build(*arguments, **keywords):
            devices = [a for a in (*arguments, *keywords.values()) if isinstance(a, (str, torch.device)) and str(a) in ("auto", "cpu", "cuda")]
            seen.append((kind, [str(d) for d in devices]))
            return SimpleNamespace(pipe=None, profile=DEFAULT)

        return build

    monkeypatch.setattr(segment, "PersonSegmenter", recorder("segmenter"))
    monkeypatch.setattr(generator, "Reposer", recorder("reposer"))
    monkeypatch.setattr(inpaint, "make_inpainter", recorder("inpainter"))
    monkeypatch.setattr(pose, "PoseExtractor", recorder("pose"))
    monkeypatch.setattr(caption, "automatic_captioner", recorder("captioner"))
    monkeypatch.setattr(finetune.LoraTrainer, "from_models_dir", recorder("trainer"))
    session = Session(tmp_path, "auto", "auto", echo=lambda _: None)
    assert str(session.device) == "cpu" and session.dtype == "fp32"
    for _ in range(2):
        session.segmenter, session.reposer, session.inpainter, session.pose_extractor, session.captioner
        session.trainer(finetune.FinetuneSettings())
    assert [kind for kind, _ in seen] == ["segmenter", "reposer", "inpainter", "pose", "captioner", "trainer"]
    assert all(devices == ["cpu"] for _, devices in seen), seen
