"""``--compile``: the generator's transformer and ResNet blocks through torch.compile (inductor, here its CPU
backend) give the eager images, and a new identity reuses the compiled code."""

import numpy as np
import pytest
import torch
from PIL import Image

from oneposetrans.errors import BadInputError
from oneposetrans.generate import Generator
from oneposetrans.pose import BUNDLED_POSES, load_pose_map
from oneposetrans.profiles import REFERENCE

CAPTION = "A woman with face, orange spacesuit"


def _random_lora(pipe, path, seed):
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for key, weight in pipe.unet.state_dict().items():
        if key.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")):
            base = f"unet.{key.removesuffix('.weight')}"
            lora[f"{base}.lora.down.weight"] = torch.randn(4, weight.shape[1], generator=generator) * 0.3
            lora[f"{base}.lora.up.weight"] = torch.randn(weight.shape[0], 4, generator=generator) * 0.3
    save_file(lora, path)
    return path


def _images(generator, lora, source, pose):
    pipe = generator.pipe
    pipe.set_ip_adapter_scale({"up_blocks.0.attentions.1": 1.0})
    pipe.load_subject_lora(lora, 1.0, fuse=True)
    try:
        identity = pipe.encode_identity(CAPTION, "bad", source, None, do_classifier_free_guidance=True)
        return pipe(
            image=[pose], identity=identity, num_inference_steps=2, output_type="np",
            generator=[torch.Generator().manual_seed(0)], transparent=False,
        ).images
    finally:
        pipe.unload_subject_lora()


def test_compiled_blocks_equal_eager_and_a_new_identity_does_not_recompile(tiny_models, tmp_path):
    from skimage import data
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    eager, compiled = Generator(tiny_models, "cpu"), Generator(tiny_models, "cpu", compile=True)
    assert len(compiled.compiled_blocks) > 0
    pose = load_pose_map(BUNDLED_POSES[0], 64)[0]
    photo = Image.fromarray(data.astronaut())
    identities = [
        (_random_lora(eager.pipe, tmp_path / "a.safetensors", 1), photo),
        (_random_lora(eager.pipe, tmp_path / "b.safetensors", 2), photo.transpose(Image.FLIP_LEFT_RIGHT)),
    ]
    graphs = []
    outputs = []
    for lora, source in identities:
        expected, got = _images(eager, lora, source, pose), _images(compiled, lora, source, pose)
        assert np.abs(got - expected).max() <= 1e-4
        graphs.append(counters["stats"]["unique_graphs"])
        outputs.append(expected)
    assert graphs[0] > 0 and graphs[1] == graphs[0]  # the second identity ran the first one's graphs
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-2  # and it was another identity


def test_reference_profile_refuses_compile(tiny_models):
    with pytest.raises(BadInputError, match="reference profile runs the published computation, uncompiled"):
        Generator(tiny_models, "cpu", profile=REFERENCE, compile=True)


@pytest.mark.parametrize("command", ["repose", "generate"])
def test_compile_with_the_reference_profile_is_one_line_before_anything_is_written(command, tmp_path, tiny_models, capsys):
    from oneposetrans import cli

    arguments = {
        "repose": ["repose", "--out", str(tmp_path / "out")],
        "generate": ["generate", "--dataset", "deepfashion", "--pairs", str(tmp_path / "pairs.csv"), "--results", str(tmp_path / "out")],
    }[command]
    if command == "generate":
        (tmp_path / "pairs.csv").write_text("from,to\n")
    assert cli.main([*arguments, "--smoke", "--device", "cpu", "--compile", "--profile", "reference"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["oneposetrans: error: --compile: the reference profile runs the published computation, uncompiled; use the default profile"]
    assert not (tmp_path / "out").exists()
