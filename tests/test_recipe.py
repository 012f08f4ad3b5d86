"""The numbered dataset recipe end to end on a synthetic DeepFashion-format mini dataset."""

import json
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from oneposetrans.cli import main
from oneposetrans.errors import BadInputError
from oneposetrans.recipe import parse_steps
from tests.conftest import REPO
from oneposetrans.testing.mini_dataset import make_mini_deepfashion

FOLDERS = (
    "images", "images_rgba", "images_mask", "images_inpainted", "lora", "poses", "reposed_result", "reposed_rgba",
    "reposed_rgb", "reposed_mask", "reposed_final_result", "refined_result", "refined_rgb", "refined_mask",
    "refined_final_result",
)
QUICK = ["--smoke", "--device", "cpu", "--resolution", "128", "--denoise-steps", "3", "--finetune-steps", "5"]


def _prepare(root, env):
    files = make_mini_deepfashion(root)
    assert main(["prepare-deepfashion", "--root", str(root), "--results", str(root / "results")]) == 0
    return files


def _run_command(root, files, *extra):
    return [
        sys.executable, "-m", "oneposetrans", "run", "--dataset", "deepfashion", "--results", str(root / "results"),
        "--pairs", str(files["pairs"]), "--keypoints", str(files["keypoints"]), "--captions", str(files["captions"]),
        *QUICK, *extra,
    ]


def _tree(results):
    return {folder: sorted(p.name for p in (results / folder).iterdir() if not p.name.startswith(".")) for folder in FOLDERS}


def _stamps(results):
    return {p: p.stat().st_mtime_ns for p in results.rglob("*.png")} | {p: p.stat().st_mtime_ns for p in results.rglob("*.safetensors")}


def test_steps_parse():
    assert parse_steps("1-11") == list(range(1, 12))
    assert parse_steps("1-4,9") == [1, 2, 3, 4, 9]
    for bad in ("0-3", "12", "x", ""):
        with pytest.raises(BadInputError):
            parse_steps(bad)


@pytest.mark.e2e
def test_whole_recipe_then_nothing_left(tmp_path, cli_env, capsys):
    files = _prepare(tmp_path, cli_env)
    results = tmp_path / "results"
    first = subprocess.run(_run_command(tmp_path, files), cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    tree = _tree(results)
    pairs = [line.split(",") for line in files["pairs"].read_text().splitlines()[1:]]
    expected = sorted(f"{a[:-4]}_to_{b[:-4]}.png" for a, b in pairs)
    assert len(expected) == 6 and len(tree["images"]) == 6 and len(tree["lora"]) == 6
    for folder in ("reposed_result", "reposed_rgba", "reposed_rgb", "reposed_mask", "reposed_final_result",
                   "refined_result", "refined_rgb", "refined_mask", "refined_final_result"):
        assert tree[folder] == expected, folder
    for folder in ("images_rgba", "images_mask", "images_inpainted"):
        assert tree[folder] == tree["images"], folder
    assert Image.open(results / "refined_result" / expected[0]).mode == "RGBA"
    records = [json.loads(line) for line in (results / "logs" / "generate.jsonl").read_text().splitlines()]
    assert sorted(r["case"] for r in records if r["status"] == "done") == expected
    assert all(r["seconds_per_target"] > 0 for r in records if r["status"] == "done")

    # The acceptance run above went through a subprocess; the rest runs in this process.
    evaluated = main(
        ["evaluate", "--results", str(results), "--ground-truth", str(results / "images"),
         "--folder", "refined_final_result", "--metrics", "ssim,ssim_256,psnr,lpips,masked_ssim,fid", "--smoke"]
    )
    assert evaluated == 0, capsys.readouterr().err[-3000:]
    summary = json.loads((results / "evaluation" / "metrics.json").read_text())["summary"]
    assert summary["pairs"] == 6 and {"ssim", "ssim_256", "psnr", "lpips", "masked_ssim", "fid"} <= set(summary)
    assert (results / "evaluation" / "report.html").exists() and (results / "evaluation" / "metrics.md").exists()

    stamps = _stamps(results)
    capsys.readouterr()
    assert main(_run_command(tmp_path, files)[3:]) == 0
    assert "models loaded" not in capsys.readouterr().out  # nothing to do, so nothing loaded
    assert _stamps(results) == stamps


@pytest.mark.e2e
def test_killed_recipe_finishes_without_recomputing(tmp_path, cli_env):
    files = _prepare(tmp_path, cli_env)
    results = tmp_path / "results"
    process = subprocess.Popen(_run_command(tmp_path, files), cwd=REPO, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    reposed = results / "reposed_result"
    while time.time() < deadline and not (reposed.is_dir() and len(list(reposed.glob("*.png"))) >= 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p: p.stat().st_mtime_ns for p in (results / "lora").glob("*.safetensors")}
    finished |= {p: p.stat().st_mtime_ns for p in reposed.glob("*.png")}
    assert 2 <= len(list(reposed.glob("*.png"))) < 6, "the run was not killed midway"

    # The kill needed a process; the rerun goes through the same entry point in this one.
    assert main(_run_command(tmp_path, files)[3:]) == 0
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert len(list(reposed.glob("*.png"))) == 6 and len(list((results / "refined_final_result").glob("*.png"))) == 6
    records = [json.loads(line) for line in (results / "logs" / "generate.jsonl").read_text().splitlines()]
    done = [r["case"] for r in records if r["status"] == "done"]
    assert len(done) == len(set(done)) == 6  # every pair generated exactly once over both runs


@pytest.mark.e2e
def test_two_processes_produce_the_same_files_each_pair_once(tmp_path, cli_env):
    files = _prepare(tmp_path, cli_env)
    results = tmp_path / "results"
    # As in tests/test_finetune.py: --multi_gpu runs torchrun, a 2-process CPU world here.
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "oneposetrans",
    ]
    # Every step shares its cases through the one stage driver: steps 1-5 show it, and the later
    # steps' sharing is the same code (the whole recipe runs in one process above).
    command = _run_command(tmp_path, files, "--steps", "1-5")
    ran = subprocess.run(
        [*launch, *command[command.index("run"):]],
        cwd=REPO, env={**cli_env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=900,
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    tree = _tree(results)
    pairs = [line.split(",") for line in files["pairs"].read_text().splitlines()[1:]]
    expected = sorted(f"{a[:-4]}_to_{b[:-4]}.png" for a, b in pairs)
    assert tree["reposed_result"] == expected and tree["refined_result"] == []
    assert len(tree["lora"]) == 6 and tree["images_inpainted"] == tree["images"] == tree["images_rgba"]
    trained = [json.loads(line) for line in (results / "logs" / "finetune.jsonl").read_text().splitlines()]
    assert sorted(r["case"] for r in trained if r["status"] == "done") == [name.removesuffix(".safetensors") for name in tree["lora"]]
    records = [json.loads(line) for line in (results / "logs" / "generate.jsonl").read_text().splitlines()]
    done = [r for r in records if r["status"] == "done"]
    assert sorted(r["case"] for r in done) == expected and {r["process"] for r in done} == {0, 1}


def test_a_wpose_run_without_openpose_says_so_before_step_1(tmp_path, tiny_models, capsys):
    """The stages say what they need: WPose's step 5 detects the targets' poses, so the run names
    the missing pose detector before it starts, not at step 5."""
    models = tmp_path / "models"
    models.mkdir()
    for folder in tiny_models.iterdir():
        if folder.name != "Annotators":  # the openpose model's folder
            (models / folder.name).symlink_to(folder)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.png b.png\n")
    command = ["run", "--dataset", "wpose", "--pairs", str(pairs), "--results", str(tmp_path / "results"), "--models", str(models),
               "--device", "cpu", "--quiet"]
    assert main(command) == 3
    captured = capsys.readouterr()
    assert "missing model 'openpose'" in captured.err and "step 1" not in captured.out
    assert not (tmp_path / "results").exists()
    assert main([*command, "--steps", "1-4"]) != 3  # no step that needs the detector: no such demand


def test_the_download_presets_are_what_the_flows_need(tmp_path):
    """``models download --for run|repose`` fetches what the flows' stages say they need."""
    from types import SimpleNamespace

    from oneposetrans import registry
    from oneposetrans.generate import GenerateInputs
    from oneposetrans.pose import BUNDLED_POSES
    from oneposetrans.profiles import DEFAULT
    from oneposetrans.recipe import Recipe
    from oneposetrans.repose import CheckedInputs, ReposeRequest, _stages
    from oneposetrans.results import ResultsTree

    session = SimpleNamespace(profile=DEFAULT, identitynet=False, inpainter_kind="lama", models=tmp_path)
    recipe = Recipe(ResultsTree(tmp_path / "r", create=False), session)
    union = lambda stages: {name for stage in stages for name in stage.models(session)}  # noqa: E731
    wpose = recipe.dataset_stages(GenerateInputs("wpose", [], {})).values()
    assert union(wpose) == set(registry.task_models("run"))
    repose = _stages(ReposeRequest(out=tmp_path / "out"), recipe, CheckedInputs(list(BUNDLED_POSES), []))
    assert union(repose) == set(registry.task_models("repose"))
