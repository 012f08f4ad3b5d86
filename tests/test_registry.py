import re

from oneposetrans import registry
from oneposetrans.cli import main
from oneposetrans.errors import MissingModelError
from tests.conftest import REPO


def test_check_on_empty_folder_lists_every_model_and_fails(tmp_path, capsys):
    assert main(["models", "check", "--models", str(tmp_path)]) == 3
    out = capsys.readouterr().out
    for model in registry.MODELS:
        assert model.name in out
        assert registry.download_command(model.name, tmp_path) in out


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
    assert main(["models", "check", "--models", str(tiny_models), "--stage", "finetune"]) == 0


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
