"""The acceptance runs of the foundation: the smoke chain, its resume, and a killed run."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from oneposetrans.cli import main
from oneposetrans.errors import BadInputError
from oneposetrans.pose import BUNDLED_POSES
from tests.conftest import REPO, seeded_tree

pytestmark = pytest.mark.e2e


def _repose(out, env, *extra):
    return [sys.executable, "-m", "oneposetrans", "repose", "--smoke", "--out", str(out), *extra]


def _partials(root):
    return [p for p in root.rglob("*") if p.name.endswith(".partial")]


def test_smoke_run_writes_tree_and_contact_sheet_and_resumes(tmp_path, cli_env, capsys):
    out = tmp_path / "smoke"
    first = subprocess.run(_repose(out, cli_env), cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("SMOKE RUN: tiny models with random weights") == 1  # the banner, once
    assert "faces found by the tiny kit's detector (random weights: the count means nothing)" in first.stdout
    assert "(smoke run: the pictures are noise)" in first.stdout
    assert first.stderr.count("tiny model kit: building") == 0  # the session's kit was already built
    # Progress of the long waits, as plain lines in a log (no carriage returns outside a terminal).
    assert "finetune astronaut: 60/60 steps" in first.stderr and "denoise 2 target(s): 25/25 steps" in first.stderr
    assert "\r" not in first.stderr
    for folder in ("images", "poses", "captions", "reposed_result", "logs", "lora", "refined_final_result"):
        assert (out / folder).is_dir()
    results = sorted((out / "reposed_result").iterdir())
    assert [p.name for p in results] == [f"astronaut_to_{p.stem}.png" for p in BUNDLED_POSES]
    finals = sorted((out / "reposed_final_result").iterdir())
    assert [p.name for p in finals] == [p.name for p in results]
    for final, result in zip(finals, results):
        assert Image.open(final).mode == "RGB" and Image.open(final).size == Image.open(result).size
    for folder in ("images_rgba", "images_mask", "images_inpainted"):
        assert [p.name for p in (out / folder).iterdir()] == ["astronaut.png"]
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width == 4 * 256 and sheet.height > 2 * 256  # source, pose, result, composite
    _check_the_flow_is_visible(out)
    for stage in ("source", "segment", "caption", "finetune", "pose", "repose", "inpaint", "paste", "contact sheet"):
        assert f"\n  {stage} " in first.stdout

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    # The acceptance run needed a process; the resume goes through the same entry point in this one.
    assert main(_repose(out, cli_env)[3:]) == 0
    second = capsys.readouterr().out
    assert "0 generated, 2 already present" in second and "models loaded" not in second  # nothing to do, nothing loaded
    assert second.count("resumed") >= 6  # source, segment, finetune, pose, repose, inpaint, paste
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps


def _check_the_flow_is_visible(out):
    """The smoke run's pictures are noise, but its geometry is the flow's: the tiny SAM cuts out the
    person (the orange spacesuit, not the whole photo), the inpainting replaces exactly the dilated
    hole, and the composite is the result inside its matte and the background outside it."""
    import numpy as np

    from oneposetrans.composite import cover

    person = np.asarray(Image.open(out / "images_rgba" / "astronaut.png"))[..., 3] > 127
    hole = np.asarray(Image.open(out / "images_mask" / "astronaut.png").convert("L")) > 127
    assert 0.1 < person.mean() < 0.6 and (hole | ~person).all()
    source = np.asarray(Image.open(out / "images" / "astronaut.png").convert("RGB"), np.float32)
    background = Image.open(out / "images_inpainted" / "astronaut.png").convert("RGB")
    changed = np.abs(np.asarray(background, np.float32) - source).max(axis=2) > 24
    assert not changed[~hole].any() and changed[person].mean() > 0.5  # the person is gone, the rest kept
    for result in sorted((out / "reposed_result").iterdir()):
        rgba = np.asarray(Image.open(result), np.float32)
        final = np.asarray(Image.open(out / "reposed_final_result" / result.name), np.float32)
        alpha = rgba[..., 3] / 255
        assert 0.2 < (alpha > 0.5).mean() < 0.8  # the kit's decoder: an oval "person" in the frame
        back = np.asarray(cover(background, (final.shape[1], final.shape[0])), np.float32)
        assert np.abs(final - rgba[..., :3])[alpha > 0.99].max() <= 3
        assert np.abs(final - back)[alpha < 0.01].max() <= 3


def test_killed_run_resumes_without_recomputing(tmp_path, cli_env, astronaut_tree):
    poses = []
    for index in range(3):
        copy = tmp_path / f"target{index}.json"
        shutil.copy(BUNDLED_POSES[index % len(BUNDLED_POSES)], copy)
        poses.append(str(copy))
    out = seeded_tree(astronaut_tree, tmp_path / "killed")
    # One target per batch, so that the results are written seconds apart and the kill lands between them.
    command = _repose(out, cli_env, "--pose", *poses, "--batch-size", "1", "--steps", "3", "--resolution", "128", "--no-composite")
    process = subprocess.Popen(command, cwd=REPO, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    results = out / "reposed_result"
    while time.time() < deadline and not (results.is_dir() and any(p.suffix == ".png" for p in results.iterdir())):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in results.glob("*.png")}
    assert 1 <= len(finished) < 3, "the run was not killed midway"
    for path in finished:
        Image.open(path).verify()  # every final file is complete

    # The kill needed a process; the rerun goes through the same entry point in this one.
    assert main(command[3:]) == 0
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in finished} == finished
    assert len(list(results.glob("*.png"))) == 3
    assert _partials(out) == []
    records = [json.loads(line) for line in (out / "logs" / "repose.jsonl").read_text().splitlines()]
    generated = [r["case"] for r in records if r["status"] == "done"]
    assert sorted(generated) == sorted(p.name for p in results.glob("*.png"))  # each exactly once


def test_bad_target_fails_alone(tmp_path, astronaut_tree, capsys):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    out = seeded_tree(astronaut_tree, tmp_path / "partial")
    code = main(["repose", "--smoke", "--device", "cpu", "--out", str(out), "--pose", str(BUNDLED_POSES[0]), str(bad),
                 "--steps", "2", "--resolution", "128", "--quiet"])
    ran = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in ran.err and "1 of 2 targets failed" in ran.err
    # The bad pose is reported before any work; the good one still runs; the table shows the stages.
    assert ran.out.index("broken.json: not valid JSON") < ran.out.index("models loaded")
    assert "  pose " in ran.out and "1 of 2 target poses ready" in ran.out
    assert " steps (" not in ran.err  # --quiet: no progress
    assert len(list((out / "reposed_result").glob("*.png"))) == 1
    assert "broken.json: not valid JSON" in (out / "logs" / "repose.jsonl").read_text()


def test_source_without_a_person_still_reposes_but_is_not_composited(tmp_path, tiny_models, capsys):
    source = tmp_path / "empty_room.png"
    Image.new("RGB", (256, 256), (128, 128, 128)).save(source)
    out = tmp_path / "nobody"
    code = main(["repose", "--smoke", "--device", "cpu", "--out", str(out), "--source", str(source), "--caption",
                 "A woman with face, grey coat", "--pose", str(BUNDLED_POSES[0]), "--steps", "2", "--resolution", "128",
                 "--finetune-steps", "5", "--quiet"])
    ran = capsys.readouterr()
    assert code == 1 and "Traceback" not in ran.err
    assert "no person found" in ran.err.strip().splitlines()[-1]
    assert "  segment        failed" in ran.out  # the failed run still prints its stage table
    assert len(list((out / "reposed_result").glob("*.png"))) == 1
    assert list((out / "reposed_final_result").iterdir()) == [] and list((out / "images_inpainted").iterdir()) == []


def test_refine_flag_refines_and_composites_the_results(tmp_path, astronaut_tree, capsys):
    out = seeded_tree(astronaut_tree, tmp_path / "refined")
    code = main(["repose", "--smoke", "--device", "cpu", "--out", str(out), "--refine", "--steps", "2", "--resolution", "128",
                 "--pose", str(BUNDLED_POSES[0]), "--quiet"])
    run = capsys.readouterr()
    assert code == 0, run.err[-2000:]
    name = f"astronaut_to_{BUNDLED_POSES[0].stem}.png"
    refined = Image.open(out / "refined_result" / name)
    assert refined.mode == "RGBA"
    assert Image.open(out / "refined_final_result" / name).size == refined.size
    assert "refine " in run.out and "paste refined" in run.out


def _ran_or_found_nobody(code: int, log) -> None:
    """A flow whose pose detector ran: it succeeded, or its only failures are the tiny
    detector finding nobody (not torch refusing the device "auto")."""
    reasons = [r["reason"] for r in map(json.loads, log.read_text().splitlines()) if r["status"] == "failed"] if log.exists() else []
    assert code == (1 if reasons else 0), reasons
    assert all("no person found by the pose detector" in reason for reason in reasons), reasons


def test_default_device_in_every_flow_that_detects_a_pose(tmp_path, astronaut_tree, tiny_models, capsys):
    """`--device auto` (the default) reaches the pose detector in the chain, a WPose dataset run
    and the demo: each one runs it instead of raising torch's error for the device "auto"."""
    from oneposetrans.demo import DemoConfig, DemoSteps

    photo = astronaut_tree / "images" / "astronaut.png"
    quick = ["--smoke", "--steps", "1", "--resolution", "64", "--quiet"]
    chain = seeded_tree(astronaut_tree, tmp_path / "chain")
    code = main(["repose", "--out", str(chain), "--pose", str(photo), "--no-composite", *quick])
    _ran_or_found_nobody(code, chain / "logs" / "pose.jsonl")
    dataset = seeded_tree(astronaut_tree, tmp_path / "dataset")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("astronaut.png astronaut.png\n")
    code = main(["generate", "--dataset", "wpose", "--pairs", str(pairs), "--results", str(dataset), *quick])
    _ran_or_found_nobody(code, dataset / "logs" / "generate.jsonl")
    capsys.readouterr()
    steps = DemoSteps(DemoConfig(tiny_models, tmp_path / "demo", resolution=64))
    assert steps.config.device == "auto"
    try:
        maps = steps.poses(steps.new_visitor(), [str(photo)])
        assert len(maps) == 1
    except BadInputError as error:  # the tiny detector may find nobody: the detector ran
        assert "no person found by the pose detector" in str(error), error
