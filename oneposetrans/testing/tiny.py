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
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

from oneposetrans import registry
from oneposetrans.caption import INSTRUCTION
from oneposetrans.imagpose.checkpoint import build_modules, modules_config, save_checkpoint, training_scheduler
from oneposetrans.imagpose.modules import CrossViewAttention
from oneposetrans.imagpose.unet import widen_conv_in
from oneposetrans.layerdiffuse import TransparentDecoderUNet, TransparentOffsetEncoder
from oneposetrans.results import write_text_atomic
from oneposetrans.runtime import quiet_libraries
from oneposetrans.vcm import cross_attention_processor_indices

_PACKAGE = Path(__file__).resolve().parent.parent
KIT_SOURCES = (
    _PACKAGE / "testing" / "tiny.py",
    _PACKAGE / "registry.py",  # folders and file names
    _PACKAGE / "vcm.py",  # the adapters' key numbering
    _PACKAGE / "layerdiffuse.py",  # the transparent VAE's modules
    _PACKAGE / "caption.py",  # the tiny captioner is trained on caption.INSTRUCTION
    _PACKAGE / "imagpose" / "modules.py",  # the CVA modules' names (the motion-module file)
    _PACKAGE / "imagpose" / "checkpoint.py",  # the IMAGPose checkpoint layout
    _PACKAGE / "data" / "tiny_grounding_dino.safetensors",
    _PACKAGE / "data" / "tiny_sam.safetensors",
    _PACKAGE / "data" / "tiny_transparent_decoder.safetensors",
)


def kit_version(sources: tuple[Path, ...] = KIT_SOURCES) -> str:
    """A digest of everything the kit is built from: an edited builder gets a fresh cache folder
    instead of a stale kit (a version bumped by hand was forgotten when the instruction changed)."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:12]


KIT_VERSION = kit_version()

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


def tiny_unet(in_channels: int = 4):
    """SDXL-shaped tiny UNet; ``in_channels=9`` is the inpainting variant (latent, mask, masked image)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32,
        in_channels=in_channels,
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


def sdxl_components(inpainting: bool = False) -> dict:
    """The tiny SDXL's models (UNet, VAE, both text encoders, scheduler), built in code from seed 0:
    what the kit saves as RealVisXL_V4.0, and what fast tests build without reading a file."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with _seeded(0):
        unet = tiny_unet(9 if inpainting else 4)
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
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2, "scheduler": scheduler}


def _build_sdxl(folder: Path, inpainting: bool = False) -> None:
    for name, model in sdxl_components(inpainting).items():
        model.save_pretrained(folder / name)
    _write_clip_tokenizer(folder / "tokenizer", pad_token="<|endoftext|>")
    _write_clip_tokenizer(folder / "tokenizer_2", pad_token="!")
    model_index = {
        "_class_name": "StableDiffusionXLInpaintPipeline" if inpainting else "StableDiffusionXLPipeline",
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


def controlnet_model(seed: int = 1):
    """The tiny OpenPose ControlNet, built in code (the kit's controlnet-openpose-sdxl-1.0)."""
    import torch
    from diffusers import ControlNetModel

    with _seeded(seed):
        controlnet = ControlNetModel.from_unet(tiny_unet())
        # from_unet zero-initialises the output convolutions (a trained ControlNet's are not): left
        # at zero, the condition would have no effect at all and tests could not see it.
        for module in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block, controlnet.controlnet_cond_embedding.conv_out):
            torch.nn.init.normal_(module.weight, std=0.05)
    return controlnet


def _build_controlnet(folder: Path, seed: int = 1) -> None:
    controlnet_model(seed).save_pretrained(folder)


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


TINY_CLIP_IMAGE_EMBED = 32
TINY_FACE_HIDDEN = 64
ARCFACE_DIM = 512


def adapter_kv(unet, seed: int) -> dict[str, "torch.Tensor"]:
    """Random ``N.to_{k,v}_ip.weight`` for every cross-attention of ``unet``, N in the published
    ip_adapter numbering (index among all UNet processors)."""
    import torch

    state = {}
    with _seeded(seed):
        for name, index in sorted(cross_attention_processor_indices(unet).items(), key=lambda item: item[1]):
            attn = unet.get_submodule(name.removesuffix(".processor"))
            for key in ("to_k_ip", "to_v_ip"):
                state[f"{index}.{key}.weight"] = torch.randn(attn.to_q.out_features, attn.to_k.in_features) * 0.1
    return state


def ip_adapter_state(unet, encoder, seed: int) -> dict:
    """An IP-Adapter for ``unet`` and the CLIP image ``encoder``, as the published file holds it:
    ``{"image_proj": proj.* and norm.* (4 image tokens), "ip_adapter": N.to_{k,v}_ip.weight}``."""
    import torch

    cross, embed = unet.config.cross_attention_dim, encoder.config.projection_dim
    with _seeded(seed):
        image_proj = {
            "proj.weight": torch.randn(4 * cross, embed) * 0.1,
            "proj.bias": torch.zeros(4 * cross),
            "norm.weight": torch.ones(cross),
            "norm.bias": torch.zeros(cross),
        }
    return {"image_proj": image_proj, "ip_adapter": adapter_kv(unet, seed + 1)}


def write_ip_adapter(folder: Path, unet, encoder, seed: int) -> None:
    """h94/IP-Adapter layout for ``unet``: sdxl_models/ip-adapter_sdxl_vit-h.safetensors (flat keys
    ``image_proj.proj.weight``, ``image_proj.norm.*``, ``ip_adapter.N.to_{k,v}_ip.weight``; 4
    image tokens) and models/image_encoder (the CLIPVisionModelWithProjection ``encoder``)."""
    from safetensors.torch import save_file

    state = ip_adapter_state(unet, encoder, seed)
    flat = {f"{group}.{key}": value for group in ("image_proj", "ip_adapter") for key, value in state[group].items()}
    (folder / "sdxl_models").mkdir(parents=True, exist_ok=True)
    save_file(flat, folder / "sdxl_models" / "ip-adapter_sdxl_vit-h.safetensors")
    encoder.save_pretrained(folder / "models" / "image_encoder")


def clip_image_encoder():
    """The tiny CLIP ViT-H stand-in (the kit's IP-Adapter/models/image_encoder), built in code."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with _seeded(30):
        return CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                image_size=224, patch_size=32, projection_dim=TINY_CLIP_IMAGE_EMBED, hidden_act="gelu",
            )
        )


def _build_ip_adapter(folder: Path) -> None:
    encoder = clip_image_encoder()
    with _seeded(0):
        unet = tiny_unet()
    write_ip_adapter(folder, unet, encoder, 30)


def instantid_resampler_state(dim: int, output_dim: int, embedding_dim: int = ARCFACE_DIM, queries: int = 16) -> dict:
    """InstantID's face Resampler under its published key names (Perceiver, depth 4, 64-d heads)."""
    import torch

    inner, ff = (dim // 64) * 64, dim * 4
    state = {
        "latents": torch.randn(1, queries, dim) / dim**0.5,
        "proj_in.weight": torch.randn(dim, embedding_dim) * 0.05,
        "proj_in.bias": torch.zeros(dim),
        "proj_out.weight": torch.randn(output_dim, dim) * 0.05,
        "proj_out.bias": torch.zeros(output_dim),
        "norm_out.weight": torch.ones(output_dim),
        "norm_out.bias": torch.zeros(output_dim),
    }
    for layer in range(4):
        for norm in ("norm1", "norm2"):
            state[f"layers.{layer}.0.{norm}.weight"] = torch.ones(dim)
            state[f"layers.{layer}.0.{norm}.bias"] = torch.zeros(dim)
        state[f"layers.{layer}.0.to_q.weight"] = torch.randn(inner, dim) * 0.05
        state[f"layers.{layer}.0.to_kv.weight"] = torch.randn(2 * inner, dim) * 0.05
        state[f"layers.{layer}.0.to_out.weight"] = torch.randn(dim, inner) * 0.05
        state[f"layers.{layer}.1.0.weight"] = torch.ones(dim)
        state[f"layers.{layer}.1.0.bias"] = torch.zeros(dim)
        state[f"layers.{layer}.1.1.weight"] = torch.randn(ff, dim) * 0.05
        state[f"layers.{layer}.1.3.weight"] = torch.randn(dim, ff) * 0.05
    return state


def instantid_state(unet, width: int, seed: int) -> dict:
    """InstantID's face adapter for ``unet`` as ip-adapter.bin holds it: {"image_proj": Resampler
    state of ``width`` (1280 published), "ip_adapter": N.to_{k,v}_ip.weight}."""
    with _seeded(seed):
        image_proj = instantid_resampler_state(width, unet.config.cross_attention_dim)
    return {"image_proj": image_proj, "ip_adapter": adapter_kv(unet, seed + 1)}


def write_instantid(folder: Path, unet, width: int, seed: int) -> None:
    """InstantX/InstantID ip-adapter.bin for ``unet`` (:func:`instantid_state`), written with plain
    tensors so that weights_only loads it."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(instantid_state(unet, width, seed), folder / "ip-adapter.bin")


def _build_instantid(folder: Path) -> None:
    with _seeded(0):
        unet = tiny_unet()
    write_instantid(folder, unet, TINY_FACE_HIDDEN, 40)
    # The same repository's optional IdentityNet (instantid-identitynet): a ControlNet folder.
    _build_controlnet(folder / "ControlNetModel", seed=42)


# Widths change at the same levels as the published (32, 32, 64, 128, 256, 512, 512), so the
# same shortcut convolutions exist and the key sets are equal.
TINY_DECODER_WIDTHS = (4, 4, 8, 12, 16, 24, 24)


# The tiny transparent decoder is trained to return, whatever it decodes, an upright oval "person"
# in the kit's orange (alpha 1) on grey (alpha 0), spanning 70 % of the picture's width and height:
# a smoke run's results then show where a result is pasted in the composite, and the reference
# profile's re-segmentation of the results (the tiny detector and SAM) finds a person in them. An
# oval in the picture's own proportions is unchanged by the decoder's eight flipped and turned
# views. Its weights ship with the package; `--train-decoder` trains them again.
TINY_DECODER_STEPS = 600
TINY_DECODER_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "tiny_transparent_decoder.safetensors"
KIT_PERSON_COLOUR = (230, 110, 40)


def tiny_decoder_target(height: int, width: int) -> "torch.Tensor":
    """What the tiny transparent decoder is trained to return: alpha, then RGB, in 0..1."""
    import torch

    y = (torch.arange(height) + 0.5) / height - 0.5
    x = (torch.arange(width) + 0.5) / width - 0.5
    inside = ((y[:, None] / 0.35) ** 2 + (x[None] / 0.35) ** 2 <= 1).float()
    colour = torch.tensor(KIT_PERSON_COLOUR)[:, None, None] / 255.0
    return torch.cat([inside[None], colour * inside + 0.5 * (1 - inside)])


def train_tiny_transparent_decoder(path: Path = TINY_DECODER_WEIGHTS) -> None:
    """Train the tiny decoder (TINY_DECODER_STEPS steps, fixed seeds) on noise pictures and
    latents of several shapes, and save its weights."""
    import torch
    from safetensors.torch import save_file

    with _seeded(50):
        decoder = TransparentDecoderUNet(block_out_channels=TINY_DECODER_WIDTHS)
    generator = torch.Generator().manual_seed(0)
    shapes = [(64, 64), (128, 128), (128, 192), (192, 128), (64, 128), (128, 64), (192, 192), (256, 256)]
    optimizer = torch.optim.Adam(decoder.parameters(), lr=2e-3)
    for step in range(TINY_DECODER_STEPS):
        height, width = shapes[step % len(shapes)]
        pixel = torch.rand(4, 3, height, width, generator=generator)
        latent = torch.randn(4, 4, height // 8, width // 8, generator=generator) * (0.5 + 2.5 * torch.rand(4, 1, 1, 1, generator=generator))
        output = decoder(pixel, latent)
        loss = torch.nn.functional.mse_loss(output, tiny_decoder_target(height, width)[None].expand_as(output))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, path)


def _build_layerdiffuse(folder: Path) -> None:
    with _seeded(50):
        unet = tiny_unet()
    write_layerdiffuse(folder, unet, TINY_DECODER_WIDTHS, 50, TINY_DECODER_WEIGHTS)


def write_layerdiffuse(folder: Path, unet, decoder_widths: tuple[int, ...], seed: int, decoder_weights: Path | None = None) -> None:
    """lllyasviel/LayerDiffuse_Diffusers for ``unet``: attention offsets keyed by UNet weight
    names, the transparent decoder (``decoder_widths``, same module names as published; random,
    or ``decoder_weights``) and the encoder (its fixed published size)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    with _seeded(seed):
        offsets = {
            name: torch.randn_like(weight) * 0.01
            for name, weight in unet.named_parameters()
            if ".attn1." in name or ".attn2." in name
            if name.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"))
        }
        decoder = TransparentDecoderUNet(block_out_channels=decoder_widths)
        if decoder_weights is not None:
            from safetensors.torch import load_file

            decoder.load_state_dict(load_file(decoder_weights))
        encoder = TransparentOffsetEncoder()
    save_file(offsets, folder / "ld_diffusers_sdxl_attn.safetensors")
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, folder / "ld_diffusers_sdxl_vae_transparent_decoder.safetensors")
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, folder / "ld_diffusers_sdxl_vae_transparent_encoder.safetensors")


def _onnx_head(name: str, side: int, outputs: int, seed: int):
    """A 3 x side x side -> outputs network (global pooling, one dense layer): the input and output
    signature by which insightface's router recognises ArcFace, landmark and attribute models."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(seed)
    weight = numpy_helper.from_array(rng.randn(3, outputs).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.randn(outputs).astype(np.float32) * 0.1, "B")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input.1"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "W", "B"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, side, side])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", outputs])],
        initializer=[weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


# Tiny SCRFD: at stride 32 a cell scores high where red clearly exceeds blue (skin-like colour),
# other strides never fire; boxes are 3 cells wide with fixed five-point landmarks.
_SCRFD_STRIDES = (8, 16, 32)
_SCRFD_LANDMARKS = (-0.5, -0.4, 0.5, -0.4, 0.0, 0.0, -0.4, 0.5, 0.4, 0.5)


def _onnx_scrfd():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, outputs = [], [], {"score": [], "bbox": [], "kps": []}
    for stride in _SCRFD_STRIDES:
        pooled = f"pool{stride}"
        nodes.append(helper.make_node("AveragePool", ["input.1"], [pooled], kernel_shape=[stride, stride], strides=[stride, stride]))
        score_weight = np.zeros((2, 3, 1, 1), np.float32)
        score_bias = np.full(2, -10.0, np.float32)
        if stride == 32:
            score_weight[:, 0], score_weight[:, 2], score_bias[:] = 20.0, -20.0, -6.0
        heads = {
            "score": (score_weight, score_bias),
            "bbox": (np.zeros((8, 3, 1, 1), np.float32), np.full(8, 1.5, np.float32)),
            "kps": (np.zeros((20, 3, 1, 1), np.float32), np.tile(np.array(_SCRFD_LANDMARKS, np.float32), 2)),
        }
        for head, (weight, bias) in heads.items():
            prefix = f"{head}{stride}"
            initializers += [numpy_helper.from_array(weight, f"{prefix}_w"), numpy_helper.from_array(bias, f"{prefix}_b")]
            nodes.append(helper.make_node("Conv", [pooled, f"{prefix}_w", f"{prefix}_b"], [f"{prefix}_conv"]))
            source = f"{prefix}_conv"
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [source], [f"{prefix}_sig"]))
                source = f"{prefix}_sig"
            width = weight.shape[0] // 2
            nodes.append(helper.make_node("Transpose", [source], [f"{prefix}_t"], perm=[0, 2, 3, 1]))
            shape = numpy_helper.from_array(np.array([-1, width], np.int64), f"{prefix}_shape")
            initializers.append(shape)
            nodes.append(helper.make_node("Reshape", [f"{prefix}_t", f"{prefix}_shape"], [prefix]))
            outputs[head].append(helper.make_tensor_value_info(prefix, TensorProto.FLOAT, [None, width]))
    graph = helper.make_graph(
        nodes, "scrfd_tiny",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


TINY_LAMA_SIDE = 256


def _build_lama(folder: Path) -> None:
    """The registry's 512-style export at the tiny side, and the published 1024x1024 one that
    ``--profile reference`` requires."""
    _build_lama_export(folder, TINY_LAMA_SIDE, "lama_fp32.onnx")
    _build_lama_export(folder, 1024, "lama_fp32_1024.onnx")


def _build_lama_export(folder: Path, side: int, name: str) -> None:
    """A fixed-size LaMa-signature ONNX graph: inputs ``image`` (1x3xSxS, 0..1) and ``mask``
    (1x1xSxS, 0/1), output in 0..255. It fills the hole with the average of the pixels around
    it, never the hole's own (a normalised blur on a 16x16 grid, drawn back up), so a smoke run
    shows the person replaced by their surroundings: plumbing only."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cell = side // 16
    nodes = [
        helper.make_node("Sub", ["one", "mask"], ["keep"]),
        helper.make_node("Mul", ["image", "keep"], ["kept"]),
        helper.make_node("AveragePool", ["kept"], ["grid_kept"], kernel_shape=[cell, cell], strides=[cell, cell]),
        helper.make_node("AveragePool", ["keep"], ["grid_keep"], kernel_shape=[cell, cell], strides=[cell, cell]),
        helper.make_node("AveragePool", ["grid_kept"], ["near_kept"], kernel_shape=[9, 9], pads=[4, 4, 4, 4], count_include_pad=0),
        helper.make_node("AveragePool", ["grid_keep"], ["near_keep"], kernel_shape=[9, 9], pads=[4, 4, 4, 4], count_include_pad=0),
        helper.make_node("Add", ["near_keep", "epsilon"], ["weight"]),
        helper.make_node("Div", ["near_kept", "weight"], ["grid_fill"]),
        helper.make_node("Resize", ["grid_fill", "", "scales"], ["fill"], mode="linear"),
        helper.make_node("Mul", ["fill", "mask"], ["filled"]),
        helper.make_node("Add", ["kept", "filled"], ["unit"]),
        helper.make_node("Mul", ["unit", "scale"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "lama_tiny",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, side, side]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, side, side]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, side, side])],
        initializer=[
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(1e-3, np.float32), "epsilon"),
            numpy_helper.from_array(np.array([1.0, 1.0, cell, cell], np.float32), "scales"),
            numpy_helper.from_array(np.array(255.0, np.float32), "scale"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), folder / name)


def _build_antelopev2(folder: Path) -> None:
    """The five antelopev2 ONNX files with their real signatures (SCRFD with 9 outputs; ArcFace
    112 -> 512; 3D-68 and 2D-106 landmarks at 192; gender-age at 96), so that insightface's
    FaceAnalysis routes and loads them. A reddish patch on a grey photo is "a face"."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(_onnx_scrfd(), folder / "scrfd_10g_bnkps.onnx")
    onnx.save(_onnx_head("glintr100", 112, ARCFACE_DIM, 60), folder / "glintr100.onnx")
    onnx.save(_onnx_head("1k3d68", 192, 3309, 61), folder / "1k3d68.onnx")
    onnx.save(_onnx_head("2d106det", 192, 212, 62), folder / "2d106det.onnx")
    onnx.save(_onnx_head("genderage", 96, 3, 63), folder / "genderage.onnx")


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


# The tiny detector is trained to call a saturated orange-red region "human" and to find nobody
# in a low-saturation picture (plain or noisy grey, grey gradients), so that both the found and
# the not-found paths can be tested. Its boxes are not trained. Training takes half a minute on
# two cores, so its result ships with the package (TINY_DETECTOR_WEIGHTS) and the kit build only
# writes it out; `python -m oneposetrans.testing.tiny --train-detector` trains it again.
TINY_DETECTOR_STEPS = 200
TINY_DETECTOR_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "tiny_grounding_dino.safetensors"
_DETECTOR_VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "human", "person", "a", "the")


def _detector_training_image(rng, person: bool, height: int, width: int):
    import numpy as np
    from PIL import Image

    pixels = np.full((height, width, 3), rng.uniform(0.2, 0.8)) + rng.normal(0, 0.05, (height, width, 3))
    if rng.random() < 0.5:
        pixels *= np.linspace(0.7, 1.2, width)[None, :, None]
    if person:
        box_w, box_h = int(width * rng.uniform(0.2, 0.6)), int(height * rng.uniform(0.3, 0.9))
        x0, y0 = rng.integers(0, width - box_w), rng.integers(0, height - box_h)
        pixels[y0 : y0 + box_h, x0 : x0 + box_w] = [rng.uniform(0.7, 1), rng.uniform(0.2, 0.6), rng.uniform(0, 0.2)]
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))


def _tiny_detector():
    """IDEA-Research/grounding-dino-tiny's layout (config, image processor, BERT tokenizer with
    vocab.txt) with a Swin backbone and BERT text encoder a few channels wide."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    with tempfile.TemporaryDirectory() as scratch:
        vocab = Path(scratch) / "vocab.txt"
        vocab.write_text("\n".join(_DETECTOR_VOCAB) + "\n")
        tokenizer = BertTokenizer(str(vocab))
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 96, "longest_edge": 160})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            image_size=96, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
            window_size=4, out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=BertConfig(
            vocab_size=len(_DETECTOR_VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=64,
        ),
        num_queries=20, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, d_model=32,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2, decoder_n_points=2,
        max_text_len=16,
    )
    return config, processor


def train_tiny_detector(path: Path = TINY_DETECTOR_WEIGHTS) -> None:
    """Train the tiny detector (TINY_DETECTOR_STEPS steps, fixed seeds) and save its weights."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data
    from transformers import GroundingDinoForObjectDetection

    config, processor = _tiny_detector()
    with _seeded(30):
        # eval(): dropout off; GroupNorm on the coarsest 1x1 level refuses training mode.
        model = GroundingDinoForObjectDetection(config).eval()
    astronaut = Image.fromarray(data.astronaut())
    rng = np.random.default_rng(0)
    with _seeded(30):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for step in range(TINY_DETECTOR_STEPS):
            # One size per batch: padded batches teach the model about padding, which a single
            # image at inference never has.
            height, width = (int(v) for v in rng.integers(60, 200, 2))
            people = [True, False] * 4
            images = [_detector_training_image(rng, person, height, width) for person in people[:-1]]
            images.append(astronaut.resize((width, height)) if step % 2 == 0 else _detector_training_image(rng, False, height, width))
            people[-1] = step % 2 == 0
            inputs = processor(images=images, text=["human."] * len(images), return_tensors="pt")
            tokens = inputs["input_ids"].shape[1]
            logits = model(**inputs).logits[:, :, :tokens]
            target = torch.tensor(people, dtype=torch.float32)[:, None, None].expand_as(logits)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with tempfile.TemporaryDirectory() as scratch:
        model.save_pretrained(scratch)  # transformers' own file: tied tensors stored as it stores them
        shutil.copyfile(Path(scratch) / "model.safetensors", path)


def _build_grounding_dino(folder: Path) -> None:
    """The tiny detector with its shipped trained weights, in the published folder layout."""
    config, processor = _tiny_detector()
    config.save_pretrained(folder)
    shutil.copyfile(TINY_DETECTOR_WEIGHTS, folder / "model.safetensors")
    processor.image_processor.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(_DETECTOR_VOCAB) + "\n")


# The tiny SAM is trained to cut out the saturated orange-red pixels of a picture, the kit's
# "person" (the detector's convention, the mini dataset's figures, the bundled photo's spacesuit),
# whatever the prompt: a smoke run's mask then sits on the person, so the inpainting and the
# composite show where the person was. Like the detector, its result ships with the package
# (TINY_SEGMENTER_WEIGHTS); `python -m oneposetrans.testing.tiny --train-segmenter` trains it again.
TINY_SEGMENTER_STEPS = 1500
TINY_SEGMENTER_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "tiny_sam.safetensors"
_SAM_SIDE = 64


def person_pixels(image) -> "np.ndarray":
    """The kit's person: saturated orange-red pixels (H x W booleans)."""
    import numpy as np

    rgb = np.asarray(image.convert("RGB"), np.float32) / 255.0
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (red > 0.55) & (red - blue > 0.3) & (red - green > 0.15)


def _tiny_sam():
    """facebook/sam-vit-huge's layout (config with vision, prompt-encoder and mask-decoder parts,
    image processor) at a 64-pixel input."""
    from transformers import SamConfig, SamImageProcessor

    side = _SAM_SIDE
    config = SamConfig(
        vision_config=dict(
            hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=side,
            patch_size=8, window_size=4, global_attn_indexes=[1], mlp_dim=32, num_pos_feats=8,
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=side, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16),
    )
    processor = SamImageProcessor(
        size={"longest_edge": side},
        pad_size={"height": side, "width": side},
        mask_size={"longest_edge": side // 4},
        mask_pad_size={"height": side // 4, "width": side // 4},
    )
    return config, processor


def train_tiny_segmenter(path: Path = TINY_SEGMENTER_WEIGHTS) -> None:
    """Train the tiny SAM (TINY_SEGMENTER_STEPS steps, fixed seeds) to give :func:`person_pixels`
    as all three of its masks, and save its weights."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data
    from transformers import SamModel

    config, processor = _tiny_sam()
    side = _SAM_SIDE
    with _seeded(31):
        model = SamModel(config)
    astronaut = Image.fromarray(data.astronaut())
    rng = np.random.default_rng(1)

    def example():
        if rng.random() < 0.25:
            image = astronaut.resize(tuple(int(v) for v in rng.integers(60, 300, 2)))
        else:
            height, width = (int(v) for v in rng.integers(60, 200, 2))
            image = _detector_training_image(rng, rng.random() < 0.8, height, width)
        # The low-resolution mask covers the processor's padded square, the picture at its top left.
        scale = side / max(image.size)
        fitted = image.resize((round(image.width * scale), round(image.height * scale)))
        target = np.zeros((side, side), np.uint8)
        target[: fitted.height, : fitted.width] = person_pixels(fitted) * 255
        low = np.asarray(Image.fromarray(target).resize((side // 2, side // 2), Image.BILINEAR), np.float32) / 255.0
        return processor(images=image, return_tensors="pt")["pixel_values"], low

    with _seeded(31):
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        everywhere = torch.tensor([[[0.0, 0.0, float(side), float(side)]]] * 16)
        for _ in range(TINY_SEGMENTER_STEPS):
            pixels, targets = zip(*(example() for _ in range(16)))
            logits = model(pixel_values=torch.cat(pixels), input_boxes=everywhere, multimask_output=True).pred_masks[:, 0]
            target = torch.from_numpy(np.stack(targets))[:, None].expand_as(logits)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with tempfile.TemporaryDirectory() as scratch:
        model.eval().save_pretrained(scratch)
        shutil.copyfile(Path(scratch) / "model.safetensors", path)


def _build_sam(folder: Path) -> None:
    """The tiny SAM with its shipped trained weights, in facebook/sam-vit-huge's folder layout."""
    config, processor = _tiny_sam()
    config.save_pretrained(folder)
    processor.save_pretrained(folder)
    shutil.copyfile(TINY_SEGMENTER_WEIGHTS, folder / "model.safetensors")


def _build_lpips_alex(folder: Path) -> None:
    """torchvision's AlexNet state dict (the file of alexnet-owt-7be5be79.pth), random weights.
    Only ``features.*`` is written: LPIPS reads nothing else, and the classifier is 230 MB."""
    import torch
    from torchvision.models import alexnet

    with _seeded(40):
        features = {k: v for k, v in alexnet().state_dict().items() if k.startswith("features.")}
    torch.save(features, folder / "alexnet-owt-7be5be79.pth")


def _half_state(module) -> dict:
    return {k: v.half() if v.is_floating_point() else v for k, v in module.state_dict().items()}


def _build_fid_inception(folder: Path) -> None:
    """torchvision's Inception-v3 at full size (the architecture is fixed), random weights stored
    in fp16 to halve the file."""
    import torch
    from torchvision.models import inception_v3

    with _seeded(41):
        model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(_half_state(model), folder / "inception_v3_google-0cc3c7bd.pth")


def _build_fid_inception_tf(folder: Path) -> None:
    """torch-fidelity's TF-ported Inception at full size, random weights in fp16."""
    from unittest import mock

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with _seeded(42):
        # torch-fidelity's constructor insists on loading weights; the kit has none yet to give it.
        with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"), mock.patch(
            "torch_fidelity.feature_extractor_inceptionv3.torch.load", return_value={}
        ):
            model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    torch.save(_half_state(model), folder / "weights-inception-2015-12-05-6726825d.pth")


# --- IMAGPose ----------------------------------------------------------------------------------
# SD1.5's block layout (three cross-attention down blocks and a plain one) at a tiny width, so the
# 21 cross-view attention places exist.
IMAGPOSE_UNET = dict(
    sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 32, 64, 64), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)


def _tiny_sd15_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**IMAGPOSE_UNET)


def _tiny_sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64,
    )


def _tiny_dinov2():
    from transformers import Dinov2Config, Dinov2Model

    return Dinov2Model(Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, image_size=224, patch_size=14))


def _build_dinov2_giant(folder: Path) -> None:
    """Wider than the kit's base and with the giant's SwiGLU feed-forward, so the FLC projection is exercised."""
    from transformers import Dinov2Config, Dinov2Model

    with _seeded(27):
        config = Dinov2Config(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, use_swiglu_ffn=True, image_size=224, patch_size=14
        )
        Dinov2Model(config).save_pretrained(folder)


def _tiny_cross_view_attention():
    import torch

    cva = CrossViewAttention(IMAGPOSE_UNET["block_out_channels"], IMAGPOSE_UNET["layers_per_block"], heads=4, groups=8)
    # Trained motion modules are not the identity: a small random output lets every one take part.
    with torch.no_grad():
        for name, parameter in cva.named_parameters():
            if "proj_out.weight" in name:
                torch.nn.init.normal_(parameter, std=0.05)
    return cva


def _build_sd15(folder: Path) -> None:
    with _seeded(21):
        _tiny_sd15_unet().save_pretrained(folder / "unet")


def _build_sd_vae(folder: Path) -> None:
    with _seeded(22):
        _tiny_sd_vae().save_pretrained(folder)


def _build_dinov2(folder: Path) -> None:
    with _seeded(23):
        _tiny_dinov2().save_pretrained(folder)


def _build_motion_module(folder: Path) -> None:
    """A motion-module file with AnimateDiff v2's key names (a plain state dict, as published)."""
    import torch

    with _seeded(24):
        torch.save(_tiny_cross_view_attention().state_dict(), folder / "mm_sd_v15_v2.ckpt")


def _build_animateanyone_motion(folder: Path) -> None:
    """The AnimateDiff layout under Moore-AnimateAnyone's file name, other weights than v2's."""
    import torch

    with _seeded(26):
        torch.save(_tiny_cross_view_attention().state_dict(), folder / "motion_module.pth")


def _build_imagpose(folder: Path) -> None:
    """A trained-looking checkpoint folder: every added module has non-zero output weights."""
    import torch

    with _seeded(25):
        unet = _tiny_sd15_unet()
        widen_conv_in(unet)
        image_encoder = _tiny_dinov2()
        # Latent patches of 8 (16 at full size) let a canvas of 64-pixel tiles train in tests.
        added = build_modules(modules_config(unet, image_encoder, pose_channels=(4, 8, 8, 16), heads=4, groups=8, patch=8))
        with torch.no_grad():
            torch.nn.init.normal_(added["pose_encoder"].conv_out.weight, std=0.05)
            torch.nn.init.normal_(unet.conv_in.weight[:, 4:], std=0.05)
        added["cross_view_attention"] = _tiny_cross_view_attention()
        vae = _tiny_sd_vae()
        components = {"vae": vae, "unet": unet, "image_encoder": image_encoder, "scheduler": training_scheduler(), **added}
        save_checkpoint(folder, components)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "sdxl-base": _build_sdxl,
    "sdxl-inpainting": functools.partial(_build_sdxl, inpainting=True),
    "controlnet-openpose": _build_controlnet,
    "openpose": _build_openpose,
    "caption-vlm": _build_caption_vlm,
    "ip-adapter": _build_ip_adapter,
    "instantid": _build_instantid,
    "layerdiffuse": _build_layerdiffuse,
    "antelopev2": _build_antelopev2,
    "lama": _build_lama,
    "grounding-dino": _build_grounding_dino,
    "sam": _build_sam,
    "lpips-alex": _build_lpips_alex,
    "fid-inception": _build_fid_inception,
    "fid-inception-tf": _build_fid_inception_tf,
    "sd15": _build_sd15,
    "sd-vae-ft-mse": _build_sd_vae,
    "dinov2-base": _build_dinov2,
    "dinov2-giant": _build_dinov2_giant,
    "animatediff-motion-v2": _build_motion_module,
    "animateanyone-motion": _build_animateanyone_motion,
    "imagpose": _build_imagpose,
}


def make_tiny_models(models_dir: str | os.PathLike, names: list[str] | None = None, progress: bool = False) -> Path:
    """Build the tiny kit into ``models_dir`` (only the models not already present).

    Each model is built in a temporary folder and renamed into place, so concurrent builders
    (tests, several accelerate processes) never see a half-written model. ``progress`` prints a
    line per model built to stderr (plain lines: they read the same in a terminal and a log).
    """
    import time

    quiet_libraries()
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    wanted = [name for name in BUILDERS if (names is None or name in names) and registry.missing_files(name, models_dir)]
    started = time.monotonic()
    for number, name in enumerate(wanted, 1):
        build = BUILDERS[name]
        if progress:
            print(f"tiny model kit: building {name} ({number}/{len(wanted)})", file=sys.stderr, flush=True)
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
    marker = models_dir / registry.TINY_KIT_MARKER
    if not marker.is_file():
        write_text_atomic(marker, "The oneposetrans tiny-model kit: the published on-disk formats with tiny random weights. No model here is real.\n")
    if progress and wanted:
        print(f"tiny model kit: ready in {time.monotonic() - started:.0f} s ({models_dir})", file=sys.stderr, flush=True)
    return models_dir


def tiny_cache_dir() -> Path:
    base = os.environ.get("ONEPOSETRANS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "oneposetrans"
    )
    return Path(base) / f"tiny-models-v{KIT_VERSION}"


def cached_tiny_models(progress: bool = False) -> Path:
    """The tiny kit in the user's cache folder, built on first use: what ``--smoke`` runs on."""
    return make_tiny_models(tiny_cache_dir(), progress=progress)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m oneposetrans.testing.tiny", description="Maintenance of the tiny model kit.")
    parser.add_argument("--train-detector", action="store_true", help=f"train the tiny detector again into {TINY_DETECTOR_WEIGHTS}")
    parser.add_argument("--train-segmenter", action="store_true", help=f"train the tiny SAM again into {TINY_SEGMENTER_WEIGHTS}")
    parser.add_argument("--train-decoder", action="store_true", help=f"train the tiny transparent decoder again into {TINY_DECODER_WEIGHTS}")
    chosen = parser.parse_args()
    if chosen.train_detector:
        train_tiny_detector()
    if chosen.train_segmenter:
        train_tiny_segmenter()
    if chosen.train_decoder:
        train_tiny_transparent_decoder()
