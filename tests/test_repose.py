import numpy as np
import pytest
from PIL import Image

from oneposetrans.finetune import FinetuneCase, FinetuneSettings, LoraTrainer
from oneposetrans.pose import BUNDLED_POSES, load_pose_map
from oneposetrans.repose import GenerationSettings, Reposer, published_lora_scales


@pytest.fixture(scope="module")
def lora(tiny_models, tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("lora")
    Image.fromarray(data.astronaut()).save(folder / "a.png")
    trainer = LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(resolution=64, steps=20, learning_rate=1e-2), "cpu")
    trainer.train(FinetuneCase("a", [folder / "a.png"], "A woman with face, orange spacesuit"))
    return trainer.save(folder / "a.safetensors")


def _zero(scales):
    if isinstance(scales, dict):
        return {key: _zero(value) for key, value in scales.items()}
    return [0.0] * len(scales) if isinstance(scales, list) else 0.0


def test_lora_and_block_scales_take_effect(tiny_models, lora):
    reposer = Reposer(tiny_models, "cpu")
    pose, _ = load_pose_map(BUNDLED_POSES[0], 64)
    settings = GenerationSettings(steps=3, resolution=64)
    generate = lambda **kw: np.asarray(reposer.generate("A woman with face, orange spacesuit", [pose], settings, **kw)[0], float)
    base = generate()
    published = generate(lora=lora)
    settings.lora_scales = _zero(published_lora_scales())
    zeroed = generate(lora=lora)
    settings.lora_scales = 1.0
    full = generate(lora=lora)
    assert np.array_equal(zeroed, base)  # scale 0 everywhere is no LoRA at all
    assert np.abs(published - base).max() > 0 and np.abs(published - full).max() > 0
    assert np.array_equal(generate(), base)  # the identity's adapter is gone after its targets
