"""The reposing stage as a whole: LoRA block scales, multi-pose batches, profiles, the CLI flags."""

import numpy as np
import pytest
from PIL import Image

from oneposetrans.finetune import FinetuneCase, FinetuneSettings, LoraTrainer
from oneposetrans.pose import BUNDLED_POSES, load_pose_map
from oneposetrans.repose import GenerationSettings, Reposer, published_lora_scales

CAPTION = "A woman with face, orange spacesuit"


@pytest.fixture(scope="module")
def source():
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def lora(tiny_models, tmp_path_factory, source):
    folder = tmp_path_factory.mktemp("lora")
    source.save(folder / "a.png")
    trainer = LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(resolution=64, steps=20, learning_rate=1e-2), "cpu")
    trainer.train(FinetuneCase("a", [folder / "a.png"], CAPTION))
    return trainer.save(folder / "a.safetensors")


@pytest.fixture(scope="module")
def reposer(tiny_models):
    return Reposer(tiny_models, "cpu")


@pytest.fixture(scope="module")
def poses():
    return [load_pose_map(path, 64)[0] for path in BUNDLED_POSES]


def _zero(scales):
    if isinstance(scales, dict):
        return {key: _zero(value) for key, value in scales.items()}
    return [0.0] * len(scales) if isinstance(scales, list) else 0.0


def test_lora_and_block_scales_take_effect(reposer, lora, poses, source):
    settings = GenerationSettings(steps=3, resolution=64)

    def generate(**kw):
        images, _ = reposer.generate(CAPTION, poses[:1], settings, source=source, **kw)
        return np.asarray(images[0], float)

    base = generate()
    published = generate(lora=lora)
    settings.lora_scales = _zero(published_lora_scales())
    zeroed = generate(lora=lora)
    settings.lora_scales = 1.0
    full = generate(lora=lora)
    assert np.array_equal(zeroed, base)  # scale 0 everywhere is no LoRA at all
    assert np.abs(published - base).max() > 0 and np.abs(published - full).max() > 0
    assert np.array_equal(generate(), base)  # the identity's adapter is gone after its targets


def test_multi_pose_pays_identity_work_once_and_matches_single_calls(reposer, poses, source, monkeypatch):
    settings = GenerationSettings(steps=2, resolution=64, batch_size=4)
    pipe = reposer.pipe
    counts = {"prompt": 0, "image": 0, "face": 0}
    for name, owner, attribute in (("prompt", pipe.text_encoder, "forward"), ("image", pipe.image_encoder, "forward"), ("face", reposer.faces, "embed")):
        original = getattr(owner, attribute)

        def counted(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, attribute, counted)
    # The two bundled poses have different sizes: two UNet batches, one identity.
    targets = [poses[0], poses[1], poses[0]]
    together, notes = reposer.generate(CAPTION, targets, settings, source=source)
    assert counts == {"prompt": 2, "image": 1, "face": 1}  # caption + negative prompt, once per identity
    assert len(together) == 3 and all(image.mode == "RGBA" for image in together)
    alone = [reposer.generate(CAPTION, [pose], settings, source=source)[0][0] for pose in targets]
    for batched, single in zip(together, alone):
        assert np.abs(np.asarray(batched, float) - np.asarray(single, float)).max() <= 1  # uint8 rounding


def test_opaque_output_and_switches(reposer, poses, source):
    settings = GenerationSettings(steps=2, resolution=64, transparent=False)
    [rgb], _ = reposer.generate(CAPTION, poses[:1], settings, source=source)
    assert rgb.mode == "RGB"
    settings.use_face = settings.use_image_prompt = False
    [plain], notes = reposer.generate(CAPTION, poses[:1], settings, source=source)
    assert not np.array_equal(np.asarray(rgb), np.asarray(plain))
    assert any("without face tokens" in note for note in notes)


def test_identitynet_as_second_controlnet(tiny_models, poses):
    from oneposetrans.face import draw_face_keypoints

    photo = np.full((256, 192, 3), 128, np.uint8)
    photo[60:140, 50:130] = (220, 140, 90)  # what the tiny detector takes for a face
    source = Image.fromarray(photo)
    settings = GenerationSettings(steps=2, resolution=64)
    with_net = Reposer(tiny_models, "cpu", identitynet=True)
    assert len(with_net.pipe.controlnet.nets) == 2
    [rgba], _ = with_net.generate(CAPTION, poses[:1], settings, source=source)
    settings.identitynet_scale = 0.0
    [off], _ = with_net.generate(CAPTION, poses[:1], settings, source=source)
    assert rgba.size == poses[0].size and not np.array_equal(np.asarray(rgba), np.asarray(off))
    keypoints = draw_face_keypoints(np.array([[0.4, 0.4], [0.6, 0.4], [0.5, 0.5], [0.42, 0.6], [0.58, 0.6]]), (64, 96))
    assert keypoints.size == (64, 96) and np.asarray(keypoints)[48, 32].tolist() == [0, 0, 255]  # the nose
