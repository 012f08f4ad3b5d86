"""Step 5, generate, as a whole: LoRA block scales, multi-pose batches, profiles, the CLI flags."""

import numpy as np
import pytest
from PIL import Image

from oneposetrans.profiles import DEFAULT, REFERENCE
from oneposetrans.finetune import FinetuneCase, FinetuneSettings, LoraTrainer
from oneposetrans.pose import BUNDLED_POSES, load_pose_map
from oneposetrans.generate import Generator
from oneposetrans.settings import GenerationSettings, published_lora_scales

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
def generator(tiny_models):
    return Generator(tiny_models, "cpu")


@pytest.fixture(scope="module")
def poses():
    return [load_pose_map(path, 64)[0] for path in BUNDLED_POSES]


def _zero(scales):
    if isinstance(scales, dict):
        return {key: _zero(value) for key, value in scales.items()}
    return [0.0] * len(scales) if isinstance(scales, list) else 0.0


def test_lora_and_block_scales_take_effect(generator, lora, poses, source):
    settings = GenerationSettings(steps=3, resolution=64)

    def generate(**kw):
        images, _ = generator.generate(CAPTION, poses[:1], settings, source=source, **kw)
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


def test_multi_pose_pays_identity_work_once_and_matches_single_calls(generator, poses, source, monkeypatch):
    settings = GenerationSettings(steps=2, resolution=64, batch_size=4)
    pipe = generator.pipe
    counts = {"prompt": 0, "image": 0, "face": 0}
    for name, owner, attribute in (("prompt", pipe.text_encoder, "forward"), ("image", pipe.image_encoder, "forward"), ("face", generator.faces, "embed")):
        original = getattr(owner, attribute)

        def counted(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, attribute, counted)
    # Poses of two sizes cannot share a UNet batch: the run splits where the size changes.
    square = poses[1].resize((64, 64))
    targets = [poses[0], poses[0], square, poses[1]]
    batches = []
    unet_forward = pipe.unet.forward

    def recorded(sample, *args, **kwargs):
        batches.append(tuple(sample.shape[::2]))  # (rows, latent height)
        return unet_forward(sample, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", recorded)
    together, notes = generator.generate(CAPTION, targets, settings, source=source)
    monkeypatch.setattr(pipe.unet, "forward", unet_forward)
    latent_height = poses[0].height // 8
    # Three calls of 2 steps, each with its unconditional half: 2 + 1 + 1 targets.
    assert batches == [(4, latent_height)] * 2 + [(2, 8)] * 2 + [(2, latent_height)] * 2
    assert counts == {"prompt": 2, "image": 1, "face": 1}  # caption + negative prompt, once per identity
    assert [image.size for image in together] == [pose.size for pose in targets]
    assert all(image.mode == "RGBA" for image in together)
    alone = [generator.generate(CAPTION, [pose], settings, source=source)[0][0] for pose in targets]
    for batched, single in zip(together, alone):
        assert np.abs(np.asarray(batched, float) - np.asarray(single, float)).max() <= 1  # uint8 rounding


def test_opaque_output_and_switches(generator, poses, source):
    settings = GenerationSettings(steps=2, resolution=64, transparent=False)
    [rgb], _ = generator.generate(CAPTION, poses[:1], settings, source=source)
    assert rgb.mode == "RGB"
    settings.use_face = settings.use_image_prompt = False
    [plain], notes = generator.generate(CAPTION, poses[:1], settings, source=source)
    assert not np.array_equal(np.asarray(rgb), np.asarray(plain))
    assert any("without face tokens" in note for note in notes)


def test_identitynet_as_second_controlnet(tiny_models, poses):
    from oneposetrans.face import draw_face_keypoints

    photo = np.full((256, 192, 3), 128, np.uint8)
    photo[60:140, 50:130] = (220, 140, 90)  # what the tiny detector takes for a face
    source = Image.fromarray(photo)
    settings = GenerationSettings(steps=2, resolution=64)
    with_net = Generator(tiny_models, "cpu", identitynet=True)
    assert len(with_net.pipe.controlnet.nets) == 2
    [rgba], _ = with_net.generate(CAPTION, poses[:1], settings, source=source)
    settings.identitynet_scale = 0.0
    [off], _ = with_net.generate(CAPTION, poses[:1], settings, source=source)
    assert rgba.size == poses[0].size and not np.array_equal(np.asarray(rgba), np.asarray(off))
    keypoints = draw_face_keypoints(np.array([[0.4, 0.4], [0.6, 0.4], [0.5, 0.5], [0.42, 0.6], [0.58, 0.6]]), (64, 96))
    assert keypoints.size == (64, 96) and np.asarray(keypoints)[48, 32].tolist() == [0, 0, 255]  # the nose


def _segmented_source(tmp_path, size=(300, 400)):
    """A results tree whose images_rgba holds a photo with a grey background and a person mask."""
    from oneposetrans.results import ResultsTree

    tree = ResultsTree(tmp_path / "results")
    photo = np.full((size[1], size[0], 3), 128, np.uint8)
    photo[40:360, 100:200] = (220, 140, 90)
    alpha = np.zeros((size[1], size[0]), np.uint8)
    alpha[40:360, 100:200] = 255
    Image.fromarray(photo).save(tree.file("images", "src.png"))
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(tree.file("images_rgba", "src.png"))
    return tree


def test_reference_identity_image_is_the_published_premultiplied_stretch(tmp_path):
    from oneposetrans.generate import load_identity_image

    tree = _segmented_source(tmp_path)
    identity, note = load_identity_image(tree, "src", REFERENCE, required=True)
    published = Image.open(tree.file("images_rgba", "src.png")).resize((1024, 1024)).convert("RGB")
    assert note is None and identity.size == (1024, 1024)
    assert np.array_equal(np.asarray(identity), np.asarray(published))
    pixels = np.asarray(identity)
    assert (pixels[:50] == 0).all() and (pixels[:, :200] == 0).all()  # the grey background came back black
    assert (pixels[512, 512] > 0).all()  # the person stays


def test_default_identity_image_keeps_the_aspect_and_pads_with_black(tmp_path):
    from oneposetrans.generate import load_identity_image

    tree = _segmented_source(tmp_path)
    identity, _ = load_identity_image(tree, "src", DEFAULT)
    pixels = np.asarray(identity)
    assert identity.size == (400, 400)  # the 300x400 photo, padded left and right
    assert (pixels[:, :50] == 0).all() and (pixels[:, 350:] == 0).all()
    assert (pixels[40:360, 150:250] == (220, 140, 90)).all()  # head to feet, undistorted
    assert (pixels[:40] == 0).all() and (pixels[360:] == 0).all()


def test_without_a_mask_the_whole_photo_with_a_note_or_a_clear_error(tmp_path):
    from oneposetrans.errors import BadInputError
    from oneposetrans.generate import load_identity_image

    tree = _segmented_source(tmp_path)
    tree.file("images_rgba", "src.png").unlink()
    identity, note = load_identity_image(tree, "src", DEFAULT)
    assert "whole photo" in note and (np.asarray(identity)[0, 100] == 128).all()
    with pytest.raises(BadInputError, match="no person mask .*run segment --mode dataset first"):
        load_identity_image(tree, "src", REFERENCE, required=True)


def test_clip_and_face_detector_read_the_identity_image(generator, poses, tmp_path, monkeypatch):
    from oneposetrans.generate import load_identity_image

    identity, _ = load_identity_image(_segmented_source(tmp_path), "src", REFERENCE)
    seen = {}
    extractor, detector = generator.pipe.feature_extractor, generator.faces.app.get
    monkeypatch.setattr(generator.pipe, "feature_extractor", lambda image, **kw: seen.setdefault("clip", image) and extractor(image, **kw))
    monkeypatch.setattr(generator.faces.app, "get", lambda bgr, **kw: seen.setdefault("face", bgr) is not None and detector(bgr, **kw))
    generator.generate(CAPTION, poses[:1], GenerationSettings(steps=1, resolution=64), source=identity)
    assert np.array_equal(np.asarray(seen["clip"]), np.asarray(identity))
    assert np.array_equal(seen["face"][:, :, ::-1], np.asarray(identity))


def test_reference_renders_one_target_per_pipeline_call(tiny_models, poses, source, monkeypatch):
    reference = Generator(tiny_models, "cpu", profile=REFERENCE)
    calls = []
    pipeline_call = type(reference.pipe).__call__
    monkeypatch.setattr(type(reference.pipe), "__call__", lambda self, **kw: calls.append(len(kw["image"])) or pipeline_call(self, **kw))
    images, _ = reference.generate(CAPTION, [poses[0]] * 3, GenerationSettings(steps=1, resolution=64, batch_size=4), source=source)
    assert len(images) == 3 and calls == [1, 1, 1]


def test_report_names_only_the_conditioning_that_was_used():
    from types import SimpleNamespace

    from oneposetrans.generate import _describe_conditioning

    settings = GenerationSettings()
    everything = SimpleNamespace(has_image=True, has_face=True)
    assert _describe_conditioning(everything, settings, lora=True, identitynet=False) == (
        "VCM (text, IP-Adapter image, InstantID face) + OpenPose ControlNet + LoRA + LayerDiffuse alpha"
    )
    no_face = SimpleNamespace(has_image=True, has_face=False)  # e.g. a caption without the word "face"
    settings.transparent = False
    assert _describe_conditioning(no_face, settings, lora=False, identitynet=True) == (
        "VCM (text, IP-Adapter image) + OpenPose ControlNet + IdentityNet + SDXL VAE (opaque)"
    )
