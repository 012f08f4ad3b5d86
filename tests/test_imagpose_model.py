"""IMAGPose's model pieces: the canvas, the 9-channel UNet, the pose encoder, FLC tokens and CVA."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from oneposetrans.errors import BadInputError
from oneposetrans.imagpose import canvas
from oneposetrans.imagpose.modules import CrossViewAttention, FeatureTokenizer, PoseEncoder, from_tiles, load_motion_modules, to_tiles
from oneposetrans.imagpose.unet import ILC_CHANNELS, ImagPoseDenoiser, cva_sites, widen_conv_in

# SD1.5's block layout at a tiny width: three cross-attention down blocks and a plain one, and back.
TINY_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)


def _unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET).eval()


def _denoiser(seed=0):
    unet = _unet(seed)
    widen_conv_in(unet)
    cva = CrossViewAttention(TINY_UNET["block_out_channels"], heads=4, groups=8)
    return ImagPoseDenoiser(unet, PoseEncoder(out_channels=32, channels=(4, 8, 8, 16)), cva).eval()


def test_one_tile_without_cva_pose_or_flags_is_the_stock_unet():
    """The acceptance equivalence: the widened UNet on (latent, flags 0, any masked latent) with no
    pose and no CVA equals the stock SD1.5-layout UNet on the latent, with the same weights."""
    stock, denoiser = _unet(), _denoiser()
    latent, context = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 32)
    masked = torch.randn(2, 4, 16, 16)
    sample = torch.cat([latent, torch.zeros(2, 1, 16, 16), masked], dim=1)
    with torch.no_grad():
        expected = stock(latent, 10, encoder_hidden_states=context).sample
        ours = denoiser(sample, 10, context, pose=None, tiled=False)
        # Untrained pose encoder and CVA start as the identity, tiled or not.
        started = denoiser(sample, 10, context, pose=torch.rand(2, 3, 128, 128), tiled=True)
    assert denoiser.unet.conv_in.in_channels == ILC_CHANNELS == 9
    assert torch.allclose(ours, expected, atol=1e-5)
    assert torch.allclose(started, expected, atol=1e-5)


def test_cva_runs_at_the_21_places_of_sd15_and_lets_the_tiles_see_each_other():
    denoiser = _denoiser()
    assert len(cva_sites(denoiser.unet)) == 21
    assert len([m for m in denoiser.cva.modules() if type(m).__name__ == "MotionModule"]) == 21
    module = denoiser.cva.down_blocks[0].motion_modules[0]
    torch.nn.init.normal_(module.temporal_transformer.proj_out.weight, std=0.5)
    features = torch.randn(1, 32, 8, 8)
    changed = features.clone()
    changed[:, :, :4, 4:] += torch.randn(1, 32, 4, 4)  # the top-right tile only
    with torch.no_grad():
        before, after = module(features), module(changed)
        # The module is the view transformer on the quadrants as frames, re-tiled.
        by_hand = from_tiles(module.temporal_transformer(to_tiles(features)))
    assert torch.equal(before, by_hand)
    for rows, columns in ((slice(0, 4), slice(0, 4)), (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8))):
        assert not torch.allclose(before[..., rows, columns], after[..., rows, columns])  # the other tiles saw it

    calls = []
    for motion_module in (m for m in denoiser.cva.modules() if type(m).__name__ == "MotionModule"):
        motion_module.register_forward_hook(lambda *_: calls.append(1))
    sample, context = torch.randn(1, 9, 16, 16), torch.randn(1, 7, 32)
    with torch.no_grad():
        tiled, single = denoiser(sample, 5, context), denoiser(sample, 5, context, tiled=False)
    assert len(calls) == 21 and not torch.allclose(tiled, single)  # every module ran once, and it counted


def test_tiles_follow_the_canvas_order_and_round_trip():
    canvas_features = torch.zeros(1, 1, 4, 6)
    canvas_features[..., :2, 3:] = 1  # top-right
    canvas_features[..., 2:, :3] = 2  # bottom-left
    canvas_features[..., 2:, 3:] = 3  # bottom-right
    tiles = to_tiles(canvas_features)
    assert tiles.shape == (1, 4, 1, 2, 3) and [tiles[0, i].unique().item() for i in range(4)] == [0, 1, 2, 3]
    assert torch.equal(from_tiles(tiles), canvas_features)


def test_pose_features_enter_after_conv_in():
    denoiser = _denoiser()
    torch.nn.init.normal_(denoiser.pose_encoder.conv_out.weight, std=0.1)
    sample, context = torch.randn(1, 9, 16, 16), torch.randn(1, 7, 32)
    with torch.no_grad():
        a = denoiser(sample, 5, context, pose=torch.zeros(1, 3, 128, 128))
        b = denoiser(sample, 5, context, pose=torch.rand(1, 3, 128, 128))
        c = denoiser(sample, 5, context, pose=None)
    assert not torch.allclose(a, b)
    assert not torch.allclose(b, c)
    assert denoiser.pose_encoder(torch.rand(1, 3, 128, 128)).shape == (1, 32, 16, 16)


def test_flc_tokens_image_tokens_then_one_token_per_16x16_latent_patch():
    tokenizer = FeatureTokenizer(width=32, encoder_width=48, patch=16, views=3)
    tokens = tokenizer(torch.randn(2, 257, 48), torch.randn(2, 4, 64, 32), view=1)
    assert tokens.shape == (2, 257 + 4 * 2, 32)
    with pytest.raises(BadInputError, match="smaller than one 16x16 patch"):
        tokenizer(torch.randn(1, 257, 48), torch.randn(1, 4, 8, 8))


def test_a_motion_module_file_with_animatediff_key_names_loads_by_name(tmp_path):
    from safetensors.torch import save_file

    cva = CrossViewAttention((32, 32, 64, 64), heads=4, groups=8)
    prefix = "down_blocks.1.motion_modules.0.temporal_transformer"
    published = {
        f"{prefix}.norm.weight": torch.full((32,), 2.0),
        f"{prefix}.proj_in.weight": torch.ones(32, 32),
        f"{prefix}.transformer_blocks.0.attention_blocks.0.to_q.weight": torch.ones(32, 32),
        f"{prefix}.transformer_blocks.0.attention_blocks.1.to_out.0.bias": torch.ones(32),
        f"{prefix}.transformer_blocks.0.attention_blocks.0.pos_encoder.pe": torch.ones(1, 32, 32),
        f"{prefix}.transformer_blocks.0.norms.1.weight": torch.ones(32),
        f"{prefix}.transformer_blocks.0.ff.net.0.proj.weight": torch.ones(256, 32),
        f"{prefix}.transformer_blocks.0.ff.net.2.weight": torch.ones(32, 128),
        f"{prefix}.transformer_blocks.0.ff_norm.bias": torch.ones(32),
        "up_blocks.3.motion_modules.2.temporal_transformer.proj_out.weight": torch.ones(32, 32),
        "mid_block.motion_modules.0.temporal_transformer.proj_out.bias": torch.ones(64),
        "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.lora": torch.ones(1),
    }
    path = tmp_path / "mm_sd_v15_v2.safetensors"
    save_file(published, path)
    matched, unmatched = load_motion_modules(cva, path)
    assert len(matched) == 11 and unmatched == ["down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.lora"]
    state = cva.state_dict()
    assert torch.equal(state[f"{prefix}.norm.weight"], torch.full((32,), 2.0))
    assert torch.equal(state["up_blocks.3.motion_modules.2.temporal_transformer.proj_out.weight"], torch.ones(32, 32))
    save_file({f"{prefix}.proj_in.weight": torch.ones(16, 16)}, tmp_path / "wrong.safetensors")
    with pytest.raises(BadInputError, match="proj_in.weight has shape"):
        load_motion_modules(cva, tmp_path / "wrong.safetensors")


@pytest.mark.parametrize(
    "mode, sources, targets, flags, results",
    [("t1", 1, 1, [1, 0, 0, 0], [1]), ("t2", 1, 1, [1, 1, 1, 0], [3]), ("multi-target", 1, 3, [1, 0, 0, 0], [1, 2, 3]),
     ("multi-target", 1, 2, [1, 0, 0, 0], [1, 2]), ("multi-source", 3, 1, [1, 1, 1, 0], [3]), ("multi-source", 2, 1, [1, 1, 1, 0], [3])],
)
def test_modes_fill_the_canvas(mode, sources, targets, flags, results):
    placed = canvas.layout(mode, sources, targets)
    assert placed.flags == flags and placed.results == results
    assert all(placed.poses[i].startswith("target:") for i in results)


def test_too_many_sources_or_poses_is_one_line():
    with pytest.raises(BadInputError, match="mode multi-source: at most 3 source"):
        canvas.layout("multi-source", 4, 1)
    with pytest.raises(BadInputError, match="mode multi-target: at most 3 target"):
        canvas.layout("multi-target", 1, 4)
    with pytest.raises(BadInputError, match="mode t1: at most 1 source"):
        canvas.layout("t1", 2, 1)


def test_a_picture_is_fitted_padded_and_cut_back():
    picture = Image.new("RGB", (176, 256), (200, 30, 30))
    tile = canvas.tile_size(176, 256, 512)
    assert tile == (384, 512) and tile[0] % 64 == 0
    fitted, frame = canvas.fit(picture, tile)
    assert fitted.size == tile and fitted.getpixel((0, 0)) == (0, 0, 0)
    joined = canvas.join([fitted, fitted, fitted, fitted])
    assert joined.size == (768, 1024) and canvas.split(joined)[3].tobytes() == fitted.tobytes()
    back = canvas.unfit(canvas.split(joined)[2], frame, picture.size)
    assert back.size == picture.size and back.getpixel((88, 128)) == (200, 30, 30)
