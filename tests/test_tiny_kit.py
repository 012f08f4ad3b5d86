import json

import numpy as np
import torch
from PIL import Image

from oneposetrans.testing.tiny import make_tiny_models


def test_sdxl_folder_loads_offline_with_stock_diffusers(tiny_models):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    base = tiny_models / "RealVisXL_V4.0"
    assert json.loads((base / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    controlnet = ControlNetModel.from_pretrained(tiny_models / "controlnet-openpose-sdxl-1.0", local_files_only=True)
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(base, controlnet=controlnet, local_files_only=True)
    # SDXL's block names exist, so block-wise scales can address them.
    assert "up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor" in pipe.unet.attn_processors
    assert pipe.vae_scale_factor == 8
    image = pipe(
        "A woman with face, red dress",
        image=Image.new("RGB", (64, 64)),
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_tokenizer_is_the_real_clip_bpe(tiny_models):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_models / "RealVisXL_V4.0" / "tokenizer")
    # Ids of openai/clip-vit-large-patch14 for this sentence.
    assert tokenizer("a photo of a person").input_ids == [49406, 320, 1125, 539, 320, 2533, 49407]
    # The VCM finds the word "face" at position 4 of the template captions.
    assert tokenizer.tokenize("A woman with face, red dress")[3] == "face</w>"
    tokenizer_2 = CLIPTokenizer.from_pretrained(tiny_models / "RealVisXL_V4.0" / "tokenizer_2")
    assert tokenizer_2.pad_token == "!"


def test_kit_is_deterministic_and_resumable(tmp_path, tiny_models):
    from safetensors.torch import load_file

    make_tiny_models(tmp_path, names=["controlnet-openpose"])
    ours = load_file(tmp_path / "controlnet-openpose-sdxl-1.0" / "diffusion_pytorch_model.safetensors")
    cached = load_file(tiny_models / "controlnet-openpose-sdxl-1.0" / "diffusion_pytorch_model.safetensors")
    assert ours.keys() == cached.keys() and all(torch.equal(ours[k], cached[k]) for k in ours)
    before = (tmp_path / "controlnet-openpose-sdxl-1.0" / "config.json").stat().st_mtime_ns
    make_tiny_models(tmp_path, names=["controlnet-openpose"])
    assert (tmp_path / "controlnet-openpose-sdxl-1.0" / "config.json").stat().st_mtime_ns == before


def test_kit_build_prints_a_line_per_model_and_trains_nothing(tmp_path, capsys, monkeypatch):
    """The detector ships trained (oneposetrans/data): building it only writes files, in well
    under the half minute its training takes."""
    import time

    from oneposetrans.testing import tiny

    monkeypatch.setattr(tiny, "train_tiny_detector", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    started = time.monotonic()
    make_tiny_models(tmp_path, names=["grounding-dino", "sam"], progress=True)
    assert time.monotonic() - started < 10
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["tiny model kit: building grounding-dino (1/2)", "tiny model kit: building sam (2/2)"]
    assert lines[2].startswith("tiny model kit: ready in ") and len(lines) == 3
    shipped = tiny.TINY_DETECTOR_WEIGHTS.read_bytes()
    assert (tmp_path / "grounding-dino-tiny" / "model.safetensors").read_bytes() == shipped
    make_tiny_models(tmp_path, names=["grounding-dino", "sam"], progress=True)
    assert capsys.readouterr().err == ""  # nothing to build, nothing said


def test_kit_version_follows_its_builders_sources(tmp_path):
    """Editing what the kit is built from (here the captioner's instruction) names a new cache
    folder, so a stale kit is never reused."""
    from oneposetrans.testing.tiny import KIT_SOURCES, KIT_VERSION, kit_version

    copies = []
    for index, source in enumerate(KIT_SOURCES):
        (tmp_path / str(index)).mkdir()
        copy = tmp_path / str(index) / source.name
        copy.write_bytes(source.read_bytes())
        copies.append(copy)
    assert kit_version(tuple(copies)) == KIT_VERSION
    caption = next(copy for copy in copies if copy.name == "caption.py")
    text = caption.read_text()
    assert "INSTRUCTION = " in text
    caption.write_text(text.replace("INSTRUCTION = ", "INSTRUCTION = 'Describe: ' + ", 1))
    assert kit_version(tuple(copies)) != KIT_VERSION
