"""The OnePoseTrans pipeline: the published checkpoint formats, the VCM's face and image branches,
the profiles, and LayerDiffuse. Equivalence with the stock diffusers pipeline:
tests/pipelines/test_pipeline_stable_diffusion_xl_oneposetrans.py."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from oneposetrans import layerdiffuse, vcm
from oneposetrans.pipeline_stable_diffusion_xl_oneposetrans import StableDiffusionXLOnePoseTransPipeline
from oneposetrans.pose import BUNDLED_POSES, load_pose_map
from tests.conftest import REPO

CAPTION = "A woman with face, red coat"


def _pipe(models, profile="default", vcm_on=True, layers=False):
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_pretrained(models / "controlnet-openpose-sdxl-1.0")
    pipe = StableDiffusionXLOnePoseTransPipeline.from_pretrained(
        models / "RealVisXL_V4.0", controlnet=controlnet, add_watermarker=False, profile=profile
    )
    pipe.set_progress_bar_config(disable=True)
    if layers:
        pipe.load_layerdiffuse(models / "LayerDiffuse", encoder=True)
    if vcm_on:
        pipe.load_vcm(
            models / "IP-Adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
            models / "IP-Adapter/models/image_encoder",
            models / "InstantID/ip-adapter.bin",
        )
    return pipe


@pytest.fixture(scope="module")
def pose():
    return load_pose_map(BUNDLED_POSES[0], 64)[0]


@pytest.fixture(scope="module")
def face():
    return np.random.RandomState(0).randn(512).astype(np.float32) * 10


def _seed():
    return torch.Generator().manual_seed(97)


def test_published_checkpoint_key_names(tiny_models):
    """The kit's files carry the published key structure, and our loader reads exactly that."""
    from diffusers import UNet2DConditionModel
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    # SDXL numbering of the published ip_adapter keys: 70 cross-attentions at odd indices 1..139.
    with init_empty_weights():
        sdxl = UNet2DConditionModel.from_config(json.loads((REPO / "bench/configs/sdxl_unet.json").read_text()))
    assert sorted(vcm.cross_attention_processor_indices(sdxl).values()) == list(range(1, 140, 2))

    from oneposetrans.testing.tiny import tiny_unet

    indices = set(vcm.cross_attention_processor_indices(tiny_unet()).values())
    adapter_keys = {f"{i}.{name}.weight" for i in indices for name in ("to_k_ip", "to_v_ip")}
    image = vcm.load_adapter_checkpoint(tiny_models / "IP-Adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors")
    assert set(image["image_proj"]) == {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
    assert set(image["ip_adapter"]) == adapter_keys
    face = vcm.load_adapter_checkpoint(tiny_models / "InstantID/ip-adapter.bin")  # torch.load, weights_only
    resampler = {"latents", "proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias", "norm_out.weight", "norm_out.bias"}
    for layer in range(4):
        resampler |= {f"layers.{layer}.0.{n}" for n in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "to_q.weight", "to_kv.weight", "to_out.weight")}
        resampler |= {f"layers.{layer}.1.{n}" for n in ("0.weight", "0.bias", "1.weight", "3.weight")}
    assert set(face["image_proj"]) == resampler and set(face["ip_adapter"]) == adapter_keys

    pipe = _pipe(tiny_models)
    assert type(pipe.vcm.image_projection).__name__ == "ImageProjection"
    assert type(pipe.vcm.face_projection).__name__ == "IPAdapterPlusImageProjection"
    assert pipe.vcm.face_projection(torch.zeros(1, 1, 512)).shape[1] == vcm.FACE_TOKENS
    # diffusers' IP-Adapter layout: the projections are the UNet's encoder_hid_proj, in role order.
    assert pipe.unet.config.encoder_hid_dim_type == "ip_image_proj"
    assert list(pipe.unet.encoder_hid_proj.image_projection_layers) == [pipe.vcm.image_projection, pipe.vcm.face_projection]
    loaded = pipe.vcm_processors["up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"]
    index = vcm.cross_attention_processor_indices(pipe.unet)["up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"]
    assert loaded.layer is pipe.vcm.layers[str(index)]
    assert torch.equal(loaded.layer.to_face_v_ip.weight, face["ip_adapter"][f"{index}.to_v_ip.weight"])
    assert torch.equal(loaded.layer.to_k_ip.weight, image["ip_adapter"][f"{index}.to_k_ip.weight"])

    folder = tiny_models / "LayerDiffuse"
    encoder_keys = set(load_file(folder / "ld_diffusers_sdxl_vae_transparent_encoder.safetensors"))
    assert encoder_keys == {f"blocks.{i}.{p}" for i in range(0, 17, 2) for p in ("weight", "bias")}
    decoder_keys = set(load_file(folder / "ld_diffusers_sdxl_vae_transparent_decoder.safetensors"))
    with init_empty_weights():
        published_size = layerdiffuse.TransparentDecoderUNet()  # widths 32..512 of the published file
    assert decoder_keys == set(published_size.state_dict())
    assert {"latent_conv_in.weight", "down_blocks.6.attentions.1.to_q.weight", "up_blocks.0.attentions.2.to_out.0.weight"} <= decoder_keys
    offsets = load_file(folder / "ld_diffusers_sdxl_attn.safetensors")
    assert offsets and set(offsets) <= {name for name, _ in tiny_unet().named_parameters()}


def test_vcm_face_value_replacement_and_image_branch(tiny_models, pose, face):
    pipe = _pipe(tiny_models)
    run = lambda caption, **kw: pipe(caption, image=[pose], generator=[_seed()], num_inference_steps=2, output_type="np", **kw)
    plain = run(CAPTION).images
    with_face = run(CAPTION, face_embedding=face)
    assert np.abs(with_face.images - plain).max() > 0 and with_face.notes == []
    other_face = run(CAPTION, face_embedding=-face).images
    assert np.abs(other_face - with_face.images).max() > 0
    # No "face" in the caption: the face is skipped, with a note, and nothing else changes.
    faceless = run("A woman in a red coat", face_embedding=face)
    assert any('no word "face"' in note for note in faceless.notes)
    assert np.array_equal(faceless.images, run("A woman in a red coat").images)

    # The pooled face value is 4 * sum softmax(V) * V, the published mean * 16 * 4.
    values = torch.randn(2, 16, 8)
    published = torch.mean(torch.softmax(values, dim=1) * values, dim=1, keepdim=True) * 16 * 4
    assert torch.allclose(vcm.pooled_face_value(values), published, atol=1e-6)


def test_zero_scale_branches_do_no_work(tiny_models, pose, face):
    pipe = _pipe(tiny_models)
    called = set()
    for name, processor in pipe.vcm_processors.items():
        for projection in ("to_k_ip", "to_face_k_ip"):
            getattr(processor.layer, projection).register_forward_hook(lambda *_, n=name, p=projection: called.add((n.split(".transformer")[0], p)))
    image = Image.new("RGB", (64, 64), "orange")
    pipe(CAPTION, image=[pose], ip_adapter_image=image, face_embedding=face, generator=[_seed()], num_inference_steps=1)
    # Image branch only in the two published blocks; the scale-0 face branch never.
    assert called == {("up_blocks.0.attentions.0", "to_k_ip"), ("up_blocks.0.attentions.1", "to_k_ip")}
    called.clear()
    pipe.set_ip_adapter_scale({})
    pipe(CAPTION, image=[pose], ip_adapter_image=image, generator=[_seed()], num_inference_steps=1)
    assert called == set()


def test_profiles_controlnet_window_and_face_position(tiny_models, pose, face):
    reference, default = _pipe(tiny_models, "reference"), _pipe(tiny_models)
    cross = lambda pipe: [p for n, p in pipe.controlnet.attn_processors.items() if n.endswith("attn2.processor")]  # noqa: E731
    assert {p.text_tokens for p in cross(reference)} == {57}
    # The default ControlNet receives the text alone (the VCM's tokens travel to the UNet only): diffusers' processor.
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in cross(default))
    caption = "A young woman with face, red coat"  # "face" is token 5, not the published 4
    assert default.encode_identity(caption, face_embedding=face).face_position == 5
    assert reference.encode_identity(caption, face_embedding=face).face_position == 4
    run = lambda pipe: pipe(caption, image=[pose], generator=[_seed()], num_inference_steps=2, output_type="np", face_embedding=face).images
    assert np.abs(run(reference) - run(default)).max() > 0


def test_layerdiffuse_offsets_rgba_and_decoder_latent_by_profile(tiny_models, pose, face):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    base = UNet2DConditionModel.from_pretrained(tiny_models / "RealVisXL_V4.0/unet")
    pipe = _pipe(tiny_models, layers=True)
    offsets = load_file(tiny_models / "LayerDiffuse/ld_diffusers_sdxl_attn.safetensors")
    key = next(iter(offsets))
    merged = dict(pipe.unet.named_parameters())[key]
    assert torch.allclose(merged, dict(base.named_parameters())[key] + offsets[key], atol=1e-6)

    seen = []
    pipe.transparent_decoder.register_forward_hook(lambda module, args, out: seen.append(args[1].abs().mean().item()))
    [rgba] = pipe(CAPTION, image=[pose], generator=[_seed()], num_inference_steps=2, face_embedding=face).images
    # 8 flip/rotation views of a non-square image: upright and quarter-turned ones in two calls.
    assert rgba.mode == "RGBA" and rgba.size == pose.size and len(seen) == 2
    reference = _pipe(tiny_models, "reference", layers=True)
    reference.transparent_decoder.register_forward_hook(lambda module, args, out: seen.append(args[1].abs().mean().item()))
    reference(CAPTION, image=[pose], generator=[_seed()], num_inference_steps=2, face_embedding=face)
    # Reference decodes the views one at a time, as published, and feeds the latent still
    # multiplied by the VAE scaling factor.
    assert len(seen) == 2 + 8
    assert seen[2] / seen[0] == pytest.approx(pipe.vae.config.scaling_factor, rel=0.2)


def test_transparent_decoding_is_rotation_consistent(tiny_models):
    decoder = layerdiffuse.TransparentDecoderUNet.from_single_file(
        tiny_models / "LayerDiffuse/ld_diffusers_sdxl_vae_transparent_decoder.safetensors"
    )
    torch.manual_seed(0)
    pixel, latent = torch.rand(1, 3, 64, 64), torch.randn(1, 4, 8, 8)
    rgba = layerdiffuse.decode_transparent(decoder, pixel, latent)
    turned = layerdiffuse.decode_transparent(decoder, torch.rot90(pixel, 1, (2, 3)), torch.rot90(latent, 1, (2, 3)))
    # The eight views are closed under rotation, so the median commutes with it.
    assert torch.allclose(torch.rot90(rgba, 1, (2, 3)), turned, atol=1e-5)
    assert rgba.shape == (1, 4, 64, 64) and 0 <= rgba.min() and rgba.max() <= 1


@pytest.mark.parametrize("size, calls", [((64, 64), 1), ((64, 128), 2)])
def test_transparent_views_batched_equal_one_at_a_time(tiny_models, size, calls):
    decoder = layerdiffuse.TransparentDecoderUNet.from_single_file(
        tiny_models / "LayerDiffuse/ld_diffusers_sdxl_vae_transparent_decoder.safetensors"
    )
    seen = []
    decoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    torch.manual_seed(0)
    pixel, latent = torch.rand(2, 3, *size), torch.randn(2, 4, size[0] // 8, size[1] // 8)
    batched = layerdiffuse.decode_transparent(decoder, pixel, latent)
    assert len(seen) == 2 * calls and sum(seen) == 16  # two images, eight views each
    seen.clear()
    single = layerdiffuse.decode_transparent(decoder, pixel, latent, batched=False)
    assert seen == [1] * 16
    assert torch.allclose(batched, single, atol=1e-5)


def test_transparent_encoder_pads_colour_and_is_deterministic(tiny_models):
    from diffusers import AutoencoderKL

    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = (200, 40, 40, 255)
    padded = layerdiffuse.pad_colour(rgba)
    assert np.allclose(padded[20, 20], np.array([200, 40, 40]) / 255, atol=1e-5)  # visible pixels kept
    assert padded[0, 0, 0] > padded[0, 0, 1]  # the transparent border takes the person's colour
    vae = AutoencoderKL.from_pretrained(tiny_models / "RealVisXL_V4.0/vae")
    encoder = layerdiffuse.TransparentOffsetEncoder.from_single_file(
        tiny_models / "LayerDiffuse/ld_diffusers_sdxl_vae_transparent_encoder.safetensors"
    )
    first = layerdiffuse.encode_transparent(vae, encoder, [rgba])
    assert first.shape == (1, 4, 8, 8) and torch.equal(first, layerdiffuse.encode_transparent(vae, encoder, [rgba]))


@pytest.mark.parametrize("profile", ["default", "reference"])
def test_transparent_decode_quantisation_by_profile(tiny_models, profile):
    """Reference: the decoder reads the 8-bit RGB the published pipeline returned, and its output is
    truncated to uint8 (numpy's astype); default: rounded."""
    pipe = _pipe(tiny_models, profile, layers=True)
    pixels = []
    pipe.transparent_decoder.register_forward_hook(lambda module, args, out: pixels.append(args[0]))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    exact = pipe._decode_transparent(latents, "pt")[0].movedim(0, -1).numpy() * 255.0
    array = pipe._decode_transparent(latents, "np")[0]
    on_grid = torch.equal(pixels[0] * 255, (pixels[0] * 255).round())
    assert on_grid == (profile == "reference")
    expected = np.floor(exact) if profile == "reference" else np.round(exact)
    assert np.array_equal(array, expected.clip(0, 255).astype(np.uint8))
    assert not np.array_equal(np.floor(exact), np.round(exact))  # the two rules differ on this output
    pipe.decode_transparent_latents(latents, main_stage=False)  # the refining stage read the VAE's own RGB
    assert not torch.equal(pixels[-1] * 255, (pixels[-1] * 255).round())


def test_reference_multiplies_by_255_in_the_decoders_dtype_before_truncating():
    """The published decoder: ``(png * 255.0).detach().cpu().float().numpy().clip(0, 255).astype(np.uint8)``
    with ``png`` in its fp16; in fp32 the product of an fp16 value can land on the other side of an integer."""
    values = torch.arange(0, 1, 1 / 4096, dtype=torch.float32).to(torch.float16)
    rgba = values[: 4 * 32 * 32].reshape(1, 4, 32, 32)
    published = (rgba * 255.0).detach().cpu().float().numpy().clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.array_equal(layerdiffuse.rgba_to_uint8(rgba, truncate=True), published)
    assert not np.array_equal(published, (rgba.float() * 255.0).numpy().clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1))
    assert np.array_equal(layerdiffuse.rgba_to_uint8(rgba, truncate=False), (rgba.float() * 255.0).round().numpy().astype(np.uint8).transpose(0, 2, 3, 1))


def test_layerdiffuse_offsets_without_a_unet_weight_are_skipped_with_a_count(tiny_models, tmp_path, caplog):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    offsets = load_file(tiny_models / "LayerDiffuse/ld_diffusers_sdxl_attn.safetensors")
    unet = UNet2DConditionModel.from_pretrained(tiny_models / "RealVisXL_V4.0/unet")
    extra = dict(offsets, **{"down_blocks.9.attentions.0.missing.weight": torch.zeros(2)})
    save_file(extra, tmp_path / "extra.safetensors")
    with caplog.at_level("WARNING"):
        assert layerdiffuse.merge_attention_offsets(unet, tmp_path / "extra.safetensors") == len(offsets)
    assert f"1 of {len(extra)} offsets match no UNet weight and were skipped" in caplog.text
    wrong = {f"other.{index}.weight": torch.zeros(2) for index in range(len(offsets) + 1)}
    save_file({**offsets, **wrong}, tmp_path / "wrong.safetensors")
    with pytest.raises(ValueError, match="offsets match no UNet weight"):
        layerdiffuse.merge_attention_offsets(unet, tmp_path / "wrong.safetensors")


def test_transparent_encode_upcasts_an_fp16_vae_that_asks_for_it(tiny_models):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_models / "RealVisXL_V4.0/vae").to(torch.float16)
    vae.register_to_config(force_upcast=True)
    encoder = layerdiffuse.TransparentOffsetEncoder.from_single_file(
        tiny_models / "LayerDiffuse/ld_diffusers_sdxl_vae_transparent_encoder.safetensors"
    )
    seen = []
    vae.encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].dtype))
    rgba = np.full((64, 64, 4), 200, np.uint8)
    latents = layerdiffuse.encode_transparent(vae, encoder, [rgba])
    assert seen == [torch.float32] and vae.dtype == torch.float16 and torch.isfinite(latents).all()


def test_identity_keys_and_values_are_computed_once_per_call_and_equal_recomputing(tiny_models, pose, face, monkeypatch):
    """Text K/V with the face value, and the image-prompt K/V, are kept from the first step:
    the images are bit-identical (fp32) to recomputing them at every step."""
    pipe = _pipe(tiny_models)
    calls = []
    attn = pipe.unet.get_submodule("up_blocks.0.attentions.1.transformer_blocks.0.attn2")
    attn.to_k.register_forward_hook(lambda module, args, out: calls.append(1))

    def run():
        calls.clear()
        return pipe(CAPTION, image=[pose], generator=[_seed()], num_inference_steps=3, face_embedding=face,
                    ip_adapter_image=Image.new("RGB", (64, 64), "red"), output_type="np").images

    kept = run()
    assert len(calls) == 1  # one identity, three steps, CFG in one batch
    counter = iter(range(10**6))
    monkeypatch.setattr(vcm, "_version_of", lambda tensor: next(counter))  # every call looks new
    recomputed = run()
    assert len(calls) == 3
    assert np.array_equal(kept, recomputed)


@pytest.mark.parametrize("profile, batches", [("reference", [2]), ("default", [1, 1])])
def test_face_resampler_batch_by_profile(tiny_models, pose, face, profile, batches):
    """Published: the Resampler projects [zeros, face] in one call; default: each row alone."""
    pipe = _pipe(tiny_models, profile)
    seen = []
    pipe.vcm.face_projection.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    pipe(CAPTION, image=[pose], generator=[_seed()], num_inference_steps=1, face_embedding=face, output_type="latent")
    assert seen == batches


def test_reference_clip_preprocessing_is_pils_bicubic_resize(tiny_models):
    """transformers 4.37 (published) resized with PIL; 5's default uses torchvision."""
    from PIL import Image

    photo = Image.fromarray(np.random.RandomState(1).randint(0, 256, (300, 410, 3), dtype=np.uint8))
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    resized = photo.resize((round(410 * 224 / 300), 224), Image.BICUBIC)
    left = (resized.width - 224) // 2
    by_hand = ((np.asarray(resized.crop((left, 0, left + 224, 224)), np.float64) / 255.0 - mean) / std).transpose(2, 0, 1)
    processed = {}
    for profile in ("reference", "default"):
        pipe = _pipe(tiny_models, profile)
        processed[profile] = np.asarray(pipe.feature_extractor(photo, return_tensors="np").pixel_values[0], np.float64)
    assert np.abs(processed["reference"] - by_hand).max() <= 1e-6
    assert np.abs(processed["default"] - by_hand).max() > 1e-3


def test_fused_lora_matches_unfused_and_restores_the_exact_weights(tiny_models, pose, face, tmp_path):
    from safetensors.torch import save_file

    pipe = _pipe(tiny_models)
    targets = [k for k, v in pipe.unet.state_dict().items() if k.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"))]
    generator = torch.Generator().manual_seed(0)
    lora = {}
    for key in targets:
        weight = pipe.unet.state_dict()[key]
        base = f"unet.{key.removesuffix('.weight')}"
        lora[f"{base}.lora.down.weight"] = torch.randn(4, weight.shape[1], generator=generator) * 0.3
        lora[f"{base}.lora.up.weight"] = torch.randn(weight.shape[0], 4, generator=generator) * 0.3
    save_file(lora, tmp_path / "subject.safetensors")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    scales = {"down": {"block_1": [0.2, 0.2], "block_2": [0.2, 0.2]}, "mid": 0.2, "up": {"block_0": [0.2, 1.0, 0.2], "block_1": [0.2] * 3}}

    def run(fuse):
        pipe.load_subject_lora(tmp_path / "subject.safetensors", scales, fuse=fuse)
        try:
            return pipe(CAPTION, image=[pose], generator=[_seed()], num_inference_steps=2, face_embedding=face, output_type="np").images
        finally:
            pipe.unload_subject_lora()

    base_image = pipe(CAPTION, image=[pose], generator=[_seed()], num_inference_steps=2, face_embedding=face, output_type="np").images
    fused = run(True)  # merged straight from the file: no peft wrappers at any time
    assert pipe.unet.state_dict().keys() == before.keys() and all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    # The same sum as peft's own merge, bit for bit.
    pipe.load_subject_lora(tmp_path / "subject.safetensors", scales, fuse=True)
    direct = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.unload_subject_lora()
    pipe._load_subject_lora_with_peft(tmp_path / "subject.safetensors", scales, fuse=True)
    merged = {k.replace(".base_layer", ""): v for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
    assert merged.keys() == direct.keys() and all(torch.equal(direct[k], merged[k]) for k in direct)
    assert sum(not torch.equal(direct[k], before[k]) for k in direct) == len(targets)
    pipe.unload_subject_lora()
    unfused = run(False)
    assert np.abs(fused - unfused).max() <= 1e-3 and np.abs(unfused - base_image).max() > 1e-2
    # Deleting the adapter leaves peft's wrappers, which file the weights under base_layer.
    after = {k.replace(".base_layer", ""): v for k, v in pipe.unet.state_dict().items()}
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _decode_as_diffusers_028(vae, latents):
    """diffusers 0.28's SDXL decode of an fp16 VAE with ``force_upcast``, written out: ``upcast_vae``
    (all fp32, then ``post_quant_conv``, ``decoder.conv_in`` and ``decoder.mid_block`` back to fp16
    under PyTorch 2 attention), fp16 latents, and ``Decoder.forward``'s cast to the up blocks' dtype."""
    import copy

    vae = copy.deepcopy(vae).to(torch.float32)
    for part in (vae.post_quant_conv, vae.decoder.conv_in, vae.decoder.mid_block):
        part.to(torch.float16)
    decoder = vae.decoder
    sample = decoder.mid_block(decoder.conv_in(vae.post_quant_conv(latents.to(torch.float16) / vae.config.scaling_factor)), None)
    sample = sample.to(next(iter(decoder.up_blocks.parameters())).dtype)
    for up_block in decoder.up_blocks:
        sample = up_block(sample, None)
    return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(sample)))


@pytest.mark.parametrize("profile", ["default", "reference"])
def test_fp16_vae_decodes_upcast_whole_or_as_diffusers_028(tiny_models, profile):
    """Reference: the main stage's decode is diffusers 0.28's, bit for bit; default: the whole VAE
    in fp32. Either way the VAE is fp16 again afterwards, with no hook left behind."""
    pipe = _pipe(tiny_models, profile, vcm_on=False, layers=True)
    pipe.vae.to(torch.float16).register_to_config(force_upcast=True)
    mid_dtypes = []
    pipe.vae.decoder.mid_block.register_forward_hook(lambda module, args, out: mid_dtypes.append(out.dtype))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(torch.float16)
    image = pipe._decode(latents, "pt")
    pipe._decode_transparent(latents, "pt")
    expected_dtype = torch.float16 if profile == "reference" else torch.float32
    assert mid_dtypes == [expected_dtype] * 2
    assert pipe.vae.dtype == torch.float16 and all(p.dtype == torch.float16 for p in pipe.vae.parameters())
    assert not pipe.vae.decoder.up_blocks[0]._forward_pre_hooks
    published = pipe.image_processor.postprocess(_decode_as_diffusers_028(pipe.vae, latents), output_type="pt")
    assert torch.equal(image, published) == (profile == "reference")
