"""Write a ``models/`` tree in the published on-disk formats, with tiny random weights.

Each builder mirrors the folder layout, file names, config keys and state-dict key names of
the real checkpoint that the registry points at, scaled down so that the whole kit builds in
seconds on a CPU. The outputs of these models are noise: they prove the plumbing, not the
pictures.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

from oneposetrans import registry

# Bump whenever a builder changes, so that cached kits are rebuilt rather than reused.
KIT_VERSION = "3"

# The tiny UNet keeps SDXL's block structure (no attention in the first level, cross-attention
# in the next two, three up blocks), so block names such as up_blocks.0.attentions.1 exist.
TINY_TEXT_HIDDEN = 32
TINY_CROSS_ATTENTION_DIM = 2 * TINY_TEXT_HIDDEN
TINY_TIME_EMBED_DIM = 8


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@functools.lru_cache(maxsize=1)
def _clip_bpe() -> tuple[str, str]:
    """CLIP's byte-level BPE as HF ``vocab.json`` and ``merges.txt`` text, built offline.

    open_clip ships the original BPE merges; the vocabulary is the 256 byte symbols, the
    same with the end-of-word marker, one entry per merge, and the two special tokens.
    """
    import open_clip

    merges_gz = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(merges_gz).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_symbols = list(_bytes_to_unicode().values())
    vocab = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
    vocab += ["".join(merge) for merge in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab_json = json.dumps({token: index for index, token in enumerate(vocab)}, ensure_ascii=False)
    merges_txt = "#version: 0.2\n" + "".join(" ".join(merge) + "\n" for merge in merges)
    return vocab_json, merges_txt


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode symbols."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def _write_clip_tokenizer(folder: Path, pad_token: str) -> None:
    """The four files of an SDXL tokenizer folder, as in the published repositories."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab_json, merges_txt = _clip_bpe()
    (folder / "vocab.json").write_text(vocab_json, encoding="utf-8")
    (folder / "merges.txt").write_text(merges_txt, encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        **special,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 4),
        transformer_layers_per_block=(1, 1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TINY_TIME_EMBED_DIM,
        # SDXL: 6 micro-conditioning ids embedded at addition_time_embed_dim, plus the pooled text.
        projection_class_embeddings_input_dim=6 * TINY_TIME_EMBED_DIM + TINY_TEXT_HIDDEN,
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
    )


def _build_sdxl(folder: Path) -> None:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with _seeded(0):
        unet = tiny_unet()
        # Four levels: 8x downsampling, like SDXL's VAE, so latents and ControlNet maps line up.
        vae = AutoencoderKL(
            block_out_channels=(8, 16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
            scaling_factor=0.13025,
            force_upcast=True,
        )
        text_config = CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_size=TINY_TEXT_HIDDEN,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=49408,
            projection_dim=TINY_TEXT_HIDDEN,
            max_position_embeddings=77,
            hidden_act="gelu",
        )
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
    # SDXL's stock scheduler (RealVisXL's model_index names EulerDiscreteScheduler).
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        timestep_spacing="leading",
        steps_offset=1,
        prediction_type="epsilon",
    )
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    text_encoder_2.save_pretrained(folder / "text_encoder_2")
    scheduler.save_pretrained(folder / "scheduler")
    _write_clip_tokenizer(folder / "tokenizer", pad_token="<|endoftext|>")
    _write_clip_tokenizer(folder / "tokenizer_2", pad_token="!")
    model_index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": True,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2))


def _build_controlnet(folder: Path) -> None:
    from diffusers import ControlNetModel

    with _seeded(1):
        controlnet = ControlNetModel.from_unet(tiny_unet())
    controlnet.save_pretrained(folder)


def _build_openpose(folder: Path) -> None:
    """The two ControlNet annotator checkpoints. OpenPose's networks have fixed layer sizes, so
    these are full-size networks with random weights, stored in fp16 (about 170 MB) under the
    published key names (module prefix dropped, as in body_pose_model.pth / hand_pose_model.pth)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    folder.mkdir(parents=True, exist_ok=True)
    for seed, (network, name) in enumerate(((bodypose_model, "body_pose_model.pth"), (handpose_model, "hand_pose_model.pth"))):
        with _seeded(10 + seed):
            state = network().state_dict()
        torch.save({key.split(".", 1)[1]: value.half() for key, value in state.items()}, folder / name)


# What the tiny captioner has been taught to answer, whatever the photo.
TINY_VLM_ANSWER = "A woman with face, orange spacesuit, white gloves"
_VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _build_caption_vlm(folder: Path) -> None:
    """A LLaVA-architecture image-text-to-text folder (CLIP vision tower, Llama language model,
    byte-level BPE tokenizer, chat template), loadable by AutoProcessor and
    AutoModelForImageTextToText. Random weights would answer noise, so the language model is
    overfitted for a few seconds to answer :data:`TINY_VLM_ANSWER` to the caption instruction:
    that lets tests follow an accepted caption through the whole flow."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    from oneposetrans.caption import INSTRUCTION

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [INSTRUCTION, TINY_VLM_ANSWER, _VLM_CHAT_TEMPLATE], vocab_size=400, min_frequency=1,
        special_tokens=["<s>", "</s>", "<pad>", "<image>"], show_progress=False,
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=_VLM_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8, projection_dim=16,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
            bos_token_id=0, eos_token_id=1, pad_token_id=2,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    with _seeded(20):
        model = LlavaForConditionalGeneration(config)
        # A zero projector makes the image tokens constant, so the answer is the same for every photo.
        projector = model.model.multi_modal_projector.linear_2
        torch.nn.init.zeros_(projector.weight)
        torch.nn.init.zeros_(projector.bias)
        projector.requires_grad_(False)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        images = [torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)]
        batch = processor(images=images, text=[prompt + " " + TINY_VLM_ANSWER + "</s>"] * len(images), return_tensors="pt")
        prompt_length = processor(images=images[:1], text=[prompt], return_tensors="pt")["input_ids"].shape[1]
        labels = batch["input_ids"].clone()
        labels[:, :prompt_length] = -100
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(80):
            loss = model(**batch, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.generation_config.eos_token_id = 1
    model.generation_config.pad_token_id = 2
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "sdxl-base": _build_sdxl,
    "controlnet-openpose": _build_controlnet,
    "openpose": _build_openpose,
    "caption-vlm": _build_caption_vlm,
}


def make_tiny_models(models_dir: str | os.PathLike, names: list[str] | None = None) -> Path:
    """Build the tiny kit into ``models_dir`` (only the models not already present).

    Each model is built in a temporary folder and renamed into place, so concurrent builders
    (tests, several accelerate processes) never see a half-written model.
    """
    from oneposetrans.runtime import quiet_libraries

    quiet_libraries()
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    for name, build in BUILDERS.items():
        if names is not None and name not in names:
            continue
        if not registry.missing_files(name, models_dir):
            continue
        target = models_dir / registry.spec(name).folder
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=models_dir))
        try:
            build(staging)
            try:
                os.rename(staging, target)
            except OSError:
                if registry.missing_files(name, models_dir):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return models_dir


def tiny_cache_dir() -> Path:
    base = os.environ.get("ONEPOSETRANS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "oneposetrans"
    )
    return Path(base) / f"tiny-models-v{KIT_VERSION}"


def cached_tiny_models() -> Path:
    """The tiny kit in the user's cache folder, built on first use: what ``--smoke`` runs on."""
    return make_tiny_models(tiny_cache_dir())
