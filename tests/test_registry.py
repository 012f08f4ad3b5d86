import re
from pathlib import Path

from oneposetrans import registry
from oneposetrans.cli import main
from oneposetrans.errors import MissingModelError
from tests.conftest import REPO


def test_check_on_empty_folder_lists_every_model_and_fails(tmp_path, capsys):
    assert main(["models", "check", "--models", str(tmp_path)]) == 3
    out = capsys.readouterr().out
    for model in registry.MODELS:
        assert model.name in out
        # A model nobody publishes (the IMAGPose checkpoint) says how to make it instead.
        assert (model.manual or registry.download_command(model.name, tmp_path)) in out


def test_require_names_folder_and_download_command(tmp_path):
    try:
        registry.require("controlnet-openpose", tmp_path)
    except MissingModelError as error:
        message = str(error)
    assert "controlnet-openpose-sdxl-1.0" in message and "models download controlnet-openpose" in message
    assert "\n" not in message


def test_tiny_kit_satisfies_its_registry_entries(tiny_models):
    for name in ("sdxl-base", "controlnet-openpose"):
        assert registry.require(name, tiny_models).is_dir()
    assert main(["models", "check", "--models", str(tiny_models), "--for", "finetune"]) == 0
    assert main(["models", "check", "--models", str(tiny_models), "--stage", "finetune"]) == 0  # the earlier name still works


def test_check_and_download_take_the_same_for(tiny_models, capsys):
    """One flag, the same choices: a command (its stages) or one stage, imagpose included."""
    assert main(["models", "check", "--models", str(tiny_models), "--for", "imagpose"]) == 0
    listed = capsys.readouterr().out
    assert main(["models", "download", "--for", "imagpose", "--dry-run", "--models", str(tiny_models)]) == 0
    planned = capsys.readouterr().out
    for name in ("sd15", "dinov2-base", "animatediff-motion-v2"):
        assert name in listed and name in planned
    assert "sdxl-base" not in listed and "sdxl-base" not in planned
    assert registry.stages_of(["repose"]) == list(registry.TASK_STAGES["repose"]) and registry.stages_of(["pose"]) == ["pose"]


def test_readme_models_table_is_generated_from_the_registry():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- models-table -->\n(.*?)\n<!-- /models-table -->", readme, re.S)
    assert block, "README lacks the generated models table"
    assert block.group(1).strip() == registry.markdown_table().strip()


def test_every_model_has_a_way_to_be_obtained():
    for model in registry.MODELS:
        assert model.hf_repo or model.url or model.manual, model.name
        assert model.required and model.stages


def test_fp16_only_folders_load_the_fp16_variant(tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"x")
    assert registry.weights_variant(tmp_path) == "fp16"
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    assert registry.weights_variant(tmp_path) is None


def test_download_dry_run_prints_sizes_and_total_offline(tmp_path, capsys):
    models = tmp_path / "models"
    assert main(["models", "download", "--dry-run", "--models", str(models)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # Default: what `repose` needs, no evaluation-only backbone.
    assert [line.split()[0] for line in lines[:-1]] == list(registry.task_models("repose"))
    assert all(" GB  to download " in line for line in lines[:-1])
    total = sum(registry.spec(name).size_gb for name in registry.task_models("repose"))
    assert lines[-1] == f"9 of 9 to download, about {total:.1f} GB (sizes approximate)"
    assert not models.exists()


def test_download_for_evaluate_and_present_models_are_not_fetched(tiny_models, capsys):
    assert main(["models", "download", "--for", "evaluate", "--dry-run", "--models", str(tiny_models)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["antelopev2", "lpips-alex", "fid-inception", "fid-inception-tf"]
    assert all("present" in line for line in lines[:-1]) and lines[-1].startswith("0 of 4 to download")


def test_unknown_model_name_is_one_line(tmp_path, capsys):
    assert main(["models", "download", "sdxl", "--dry-run", "--models", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("oneposetrans: error: unknown model sdxl; known: sdxl-base, ")


def test_offline_download_is_one_line_per_model_and_a_summary_and_leaves_no_folders(tmp_path, capsys, monkeypatch):
    import urllib.error

    import huggingface_hub

    def no_hub(repo_id, local_dir, **kwargs):
        (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True)  # what the hub creates first
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your internet connection.\nMore advice.")

    def no_network(request, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.setattr(registry.urllib.request, "urlopen", no_network)
    models = tmp_path / "models"
    names = ["lama", "sam", "lpips-alex"]
    assert registry.download(names, models) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    failures = [line for line in lines if "download failed" in line]
    assert [line.split(":")[0] for line in failures] == names
    assert "We couldn't connect" in failures[0] and "Check your internet" not in "\n".join(lines)
    assert lines[-1].startswith("downloaded 0 of 3 models; 3 failed (lama, sam, lpips-alex)")
    assert not models.exists()


def test_interrupted_url_download_resumes_from_its_part_file(tmp_path, monkeypatch):
    import io

    payload = bytes(range(256)) * 40
    folder = tmp_path / "lpips"
    folder.mkdir()
    (folder / ".alexnet-owt-7be5be79.pth.part").write_bytes(payload[:1000])
    asked = []

    class Response(io.BytesIO):
        status = 206

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def ranged(request, timeout):
        asked.append(request.headers.get("Range"))
        return Response(payload[1000:])

    monkeypatch.setattr(registry.urllib.request, "urlopen", ranged)
    assert registry.download(["lpips-alex"], tmp_path) == 0
    assert asked == ["bytes=1000-"]
    assert (folder / "alexnet-owt-7be5be79.pth").read_bytes() == payload
    assert not (folder / ".alexnet-owt-7be5be79.pth.part").exists()


def test_make_tiny_says_which_model_it_builds(tmp_path, capsys, monkeypatch):
    from oneposetrans.testing import tiny

    # Two of the kit's smallest models stand in for the whole build (about 10 s on 2 cores).
    monkeypatch.setattr(tiny, "BUILDERS", {name: tiny.BUILDERS[name] for name in ("dinov2-base", "animateanyone-motion")})
    assert main(["models", "make-tiny", str(tmp_path / "kit")]) == 0
    err = capsys.readouterr().err
    assert "building dinov2-base (1/2)" in err and "building animateanyone-motion (2/2)" in err
