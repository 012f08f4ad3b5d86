import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from tests.conftest import REPO

ROOT_SCRIPTS = [
    "tool_utils.py",
    "oneposetrans_deepfashion.py",
    "oneposetrans_wpose.py",
    "refining_stage_deepfashion.py",
    "refining_stage_wpose.py",
    "demo.py",
]


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", ROOT_SCRIPTS)
def test_root_scripts_have_help(script):
    helped = _run(script, "--help")
    assert helped.returncode == 0 and "--models" in helped.stdout
    # The published names run the default profile unless told otherwise.
    assert "runs the default profile" in " ".join(helped.stdout.split())
    if script == "oneposetrans_wpose.py":
        assert "--dataset {" not in helped.stdout and "--dataset DATASET" not in helped.stdout  # the script supplies it


def test_tool_utils_missing_folder_is_one_line(tmp_path):
    ran = _run(
        "tool_utils.py", "--mode", "rgb", "--source_path", str(tmp_path / "absent"),
        "--rgb_path", str(tmp_path / "rgb"), "--mask_path", str(tmp_path / "mask"),
    )
    assert ran.returncode == 1 and "Traceback" not in ran.stderr
    assert ran.stderr.strip() == f"oneposetrans: error: {tmp_path / 'absent'}: no such folder"


def test_pipeline_imports_under_its_original_name():
    ran = _run("-c", "from pipeline_stable_diffusion_xl_oneposetrans import StableDiffusionXLOnePoseTransPipeline as P; print(P.__mro__[1].__name__)")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "StableDiffusionXLControlNetPipeline"


def test_stage_without_models_is_one_line_and_exit_3(tmp_path):
    ran = _run("-m", "oneposetrans", "repose", "--out", str(tmp_path / "out"), "--models", str(tmp_path / "none"), "--resolution", "64")
    assert ran.returncode == 3
    assert "Traceback" not in ran.stderr
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    # Every missing model at once, with the total size and one command that fetches them all.
    assert len(lines) == 1 and lines[0].startswith(f"oneposetrans: error: 9 models missing in {tmp_path / 'none'} (about ")
    assert "models download sdxl-base controlnet-openpose ip-adapter instantid layerdiffuse antelopev2 grounding-dino sam lama" in lines[0]
    assert not (tmp_path / "out").exists()


def test_every_flag_of_every_command_has_help():
    import argparse

    from oneposetrans.cli import build_parser

    def walk(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from walk(sub)
            elif action.option_strings and action.dest != "help":
                yield parser.prog, action

    missing = [f"{prog} {action.option_strings[0]}" for prog, action in walk(build_parser()) if not action.help]
    assert missing == []


@pytest.mark.parametrize(
    "script", ["lora_deepfashion.py", "lora_wpose.py", "generate_fashion_datasets.py", "MLLM/description_gen.py"]
)
def test_built_root_scripts_have_help(script):
    helped = _run(script, "--help")
    assert helped.returncode == 0 and "--results" in helped.stdout
    # The script's own name and what it runs, not the generic command's usage.
    assert helped.stdout.startswith(f"usage: {Path(script).name} ") and "is `python -m oneposetrans" in helped.stdout


def test_help_shows_the_published_defaults(capsys):
    from oneposetrans.cli import main

    for command, expected in (
        ("repose", ["denoising steps (default: 25)", "(default: 5.0)", "(default: 97)", "--finetune-steps"]),
        ("generate", ["(default: 25)", "(default: 97)"]),
        ("demo", ["port (default: 7860)"]),
        ("finetune", ["(default: 60)", "(default: 0.001)"]),
    ):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for fragment in expected:
            assert " ".join(fragment.split()) in text, (command, fragment)
        assert "(default: False)" not in text and "(default: None)" not in text


@pytest.mark.parametrize("where", ["under_a_file", "existing_file", "proc"])
def test_unwritable_output_is_one_line_and_exit_2(where, tmp_path, tiny_models, capsys):
    from oneposetrans import cli

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = {"under_a_file": blocker / "out", "existing_file": blocker, "proc": Path("/proc/oneposetrans-out")}[where]
    before = sorted(tmp_path.rglob("*"))
    assert cli.main(["repose", "--smoke", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("oneposetrans: error: ") and "Traceback" not in err[0]
    assert sorted(tmp_path.rglob("*")) == before


def test_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    import torch

    from oneposetrans import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["repose", "--smoke", "--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "oneposetrans: error: --device cuda: no CUDA GPU is available here; use --device cpu (or auto)"
    assert not (tmp_path / "out").exists() and "SMOKE" not in captured.out


def _no_model_may_load(monkeypatch, kit: bool = True):
    """Input checks come before any model (and, unless ``kit``, before the tiny kit is even
    looked up): reaching one fails the test."""
    from oneposetrans import finetune, generate, segment, testing

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(segment.PersonSegmenter, "__init__", refuse)
    monkeypatch.setattr(finetune.LoraTrainer, "from_models_dir", refuse)
    monkeypatch.setattr(generate.Generator, "__init__", refuse)
    if not kit:
        monkeypatch.setattr(testing, "cached_tiny_models", refuse)


@pytest.mark.parametrize("problem", ["missing_source", "source_not_an_image", "every_pose_broken", "pose_photo_without_openpose"])
def test_bad_inputs_fail_at_once_in_one_line_and_create_nothing(problem, tmp_path, tiny_models, capsys, monkeypatch):
    from oneposetrans import cli

    # Everything but the missing model is found before the kit, the session or any model.
    _no_model_may_load(monkeypatch, kit=problem == "pose_photo_without_openpose")
    not_an_image = tmp_path / "photo.png"
    not_an_image.write_text("not a picture")
    broken = tmp_path / "broken.json"
    broken.write_text('{"people": []')
    photo = tmp_path / "someone.png"
    Image.fromarray(data.astronaut()).save(photo)
    models = tmp_path / "models"
    if problem == "pose_photo_without_openpose":
        models.mkdir()
        for folder in tiny_models.iterdir():
            if folder.name != "Annotators":  # the openpose model's folder
                (models / folder.name).symlink_to(folder)
    flags = {
        "missing_source": ["--smoke", "--source", str(tmp_path / "absent.jpg")],
        "source_not_an_image": ["--smoke", "--source", str(not_an_image)],
        "every_pose_broken": ["--smoke", "--pose", str(broken), str(broken.with_name("absent.json"))],
        "pose_photo_without_openpose": ["--models", str(models), "--pose", str(photo)],
    }[problem]
    out = tmp_path / "out"
    code = cli.main(["repose", "--device", "cpu", "--out", str(out), *flags])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == (3 if problem == "pose_photo_without_openpose" else 1)
    assert len(lines) == 1 and lines[0].startswith("oneposetrans: error: ") and "Traceback" not in captured.err
    assert {
        "missing_source": "absent.jpg: no such file",
        "source_not_an_image": "photo.png",
        "every_pose_broken": "no usable target pose: ",
        "pose_photo_without_openpose": "missing model 'openpose'",
    }[problem] in lines[0]
    if problem == "every_pose_broken":
        assert "broken.json: not valid JSON" in lines[0] and "absent.json: no such file" in lines[0]
    assert not out.exists() and "SMOKE RUN" not in captured.out


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "--dataset", "deepfashion", "--pairs", "MISSING"],
        ["finetune", "--pairs", "MISSING"],
        ["refine", "--captions", "MISSING"],
    ],
)
def test_dataset_commands_check_their_inputs_before_the_results_tree(command, tmp_path, tiny_models, capsys):
    from oneposetrans import cli

    results = tmp_path / "results"
    missing = str(tmp_path / "absent.csv")
    code = cli.main([*[missing if word == "MISSING" else word for word in command], "--smoke", "--device", "cpu", "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "absent.csv" in err
    assert not results.exists()


def test_full_disk_while_writing_is_one_line_and_leaves_nothing_half_written(tmp_path, tiny_models, capsys, monkeypatch):
    import errno

    from oneposetrans import cli, results

    def full(source, target):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(results.os, "replace", full)
    out = tmp_path / "out"
    assert cli.main(["repose", "--smoke", "--device", "cpu", "--out", str(out), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"oneposetrans: error: {out / 'images' / 'astronaut.png'}: No space left on device"]
    assert [p for p in out.rglob("*") if p.is_file()] == []  # no final file, no temporary one


def test_progress_lines_in_a_log_and_silence_when_quiet():
    import io

    from oneposetrans import progress

    progress.set_enabled(True)  # an earlier in-process --quiet run may have turned it off
    log = io.StringIO()
    with progress.Progress(60, "finetune x", stream=log) as bar:
        for _ in range(60):
            bar.update()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 1 <= len(lines) <= 11
    assert lines[-1].startswith("finetune x: 60/60 steps (")
    progress.set_enabled(False)
    try:
        quiet = io.StringIO()
        with progress.Progress(60, "finetune x", stream=quiet) as bar:
            bar.update(60)
        assert quiet.getvalue() == ""
    finally:
        progress.set_enabled(True)


def test_progress_counts_denoising_steps_through_the_pipelines_callback():
    import io

    from oneposetrans import progress

    progress.set_enabled(True)
    log = io.StringIO()
    with progress.Progress(3, "denoise", stream=log) as bar:
        callback = bar.step_callback()
        for step in range(3):
            assert callback(None, step, 999 - step, {"latents": object()}) == {}  # nothing replaced
        assert bar.count == 3
    assert log.getvalue().splitlines()[-1].startswith("denoise: 3/3 steps (")
    # Nothing shown: no callback, so the pipeline makes no call per step.
    assert progress.Progress(0, "denoise").step_callback() is None
    progress.set_enabled(False)
    try:
        assert progress.Progress(3, "denoise").step_callback() is None
    finally:
        progress.set_enabled(True)
