import subprocess
import sys
from pathlib import Path

import pytest

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
    assert len(lines) == 1 and "missing model 'sdxl-base'" in lines[0] and "models download sdxl-base" in lines[0]


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
