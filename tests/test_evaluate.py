"""Metrics in the field's protocol: equal to the reference implementations, and the report."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from oneposetrans.errors import BadInputError
from oneposetrans import evaluate as evaluate_module
from oneposetrans.evaluate import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvaluationRequest,
    InceptionFeatures,
    Lpips,
    community_inception_input,
    evaluate,
    frechet_distance,
    parse_metrics,
    parse_size,
    pcdms_batches,
    pcdms_pixels,
    psnr,
    ssim,
)
from tests.conftest import REPO


def _pairs(count=3, seed=0):
    rng = np.random.default_rng(seed)
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((176, 256)), np.float64) / 255.0
    generated = np.stack([np.clip(photo + rng.normal(0, 0.05 * (i + 1), photo.shape), 0, 1) for i in range(count)])
    target = np.stack([np.roll(photo, 3 * i, axis=1) for i in range(count)])
    as_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float()  # noqa: E731
    return as_tensor(generated), as_tensor(target)


def _numpy(tensor):
    return tensor.permute(0, 2, 3, 1).double().numpy()


@pytest.mark.parametrize("backend", ["scipy", "torch"])  # torch is the GPU path, checked here on the CPU
def test_ssim_every_variant_and_psnr_equal_scikit_image(backend):
    generated, target = _pairs(count=5)
    ours_ssim, ours_256 = ssim(generated, target, "ssim", backend), ssim(generated, target, "ssim_256", backend)
    ours_pcdms = ssim(generated, target, "ssim_pcdms", backend)
    ours_psnr = psnr(generated, target)
    for index, (g, t) in enumerate(zip(_numpy(generated), _numpy(target))):
        # GFLA/CFLD "ssim": [0,1], 51x51 uniform window.
        assert ours_ssim[index] == pytest.approx(structural_similarity(g, t, win_size=51, data_range=1, channel_axis=2), abs=1e-6)
        # "ssim_256": [0,255], Gaussian sigma 1.5, population covariance, data range of the generated image.
        g255, t255 = g * 255, t * 255
        reference = structural_similarity(
            g255, t255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            data_range=g255.max() - g255.min(), channel_axis=2,
        )
        assert ours_256[index] == pytest.approx(reference, abs=1e-6)
        # "ssim_pcdms": the same with sigma 1.2 (PIDM, PCDMs, IMAGPose).
        reference = structural_similarity(
            g255, t255, gaussian_weights=True, sigma=1.2, use_sample_covariance=False,
            data_range=g255.max() - g255.min(), channel_axis=2,
        )
        assert ours_pcdms[index] == pytest.approx(reference, abs=1e-6)
        assert ours_psnr[index] == pytest.approx(peak_signal_noise_ratio(t, g, data_range=1), abs=1e-4)


def test_frechet_distance_equals_the_closed_form():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (400, 8)) @ rng.normal(0, 1, (8, 8))
    b = rng.normal(0.5, 2, (300, 8))
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr sqrt(A B) = Tr sqrt(A^1/2 B A^1/2), computed by symmetric eigendecompositions only.
    values, vectors = np.linalg.eigh(sigma_a)
    root_a = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    inner = np.linalg.eigvalsh(root_a @ sigma_b @ root_a)
    closed = ((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()
    assert frechet_distance(a, b) == pytest.approx(closed, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_with_fewer_images_than_features_equals_torch_fidelity():
    """The low-rank route (fewer images than dimensions, as every test and small evaluation)
    gives torch-fidelity's value, which takes the eigenvalues of the full product, up to that
    route's rounding: the square roots of its ~1e-14 null eigenvalues add ~1e-7 each. Against
    the symmetric closed form with those clipped to zero it agrees to 1e-9."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    rng = np.random.default_rng(2)
    for a, b in ((rng.normal(0, 1, (12, 256)), rng.normal(0.3, 1.5, (9, 256))), (rng.gamma(2, 1, (40, 64)), rng.gamma(2, 1, (40, 64)))):
        stats = [fid_features_to_statistics(torch.from_numpy(x)) for x in (a, b)]
        expected = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
        assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
        sigma_a, sigma_b = stats[0]["sigma"], stats[1]["sigma"]
        values, vectors = np.linalg.eigh(sigma_a)
        root_a = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
        inner = np.clip(np.linalg.eigvalsh(root_a @ sigma_b @ root_a), 0, None)
        mean_term = ((stats[0]["mu"] - stats[1]["mu"]) ** 2).sum()
        closed = mean_term + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.sqrt(inner[inner > 1e-9 * inner.max()]).sum()
        assert frechet_distance(a, b) == pytest.approx(closed, rel=1e-9)


def test_lpips_equals_the_lpips_package_with_the_same_backbone(tiny_models):
    import lpips
    from torchvision.models import alexnet

    ours = Lpips(tiny_models, torch.device("cpu"))
    backbone = alexnet()
    backbone.load_state_dict(torch.load(tiny_models / "lpips" / "alexnet-owt-7be5be79.pth", weights_only=True), strict=False)
    package = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    for index in range(1, package.net.N_slices + 1):
        for name, module in getattr(package.net, f"slice{index}").named_children():
            module.load_state_dict(backbone.features[int(name)].state_dict())
    generated, target = _pairs()
    batched = ours(generated, target)
    for index in range(len(generated)):
        single = package(generated[index : index + 1] * 2 - 1, target[index : index + 1] * 2 - 1).item()
        assert batched[index].item() == pytest.approx(single, rel=1e-5, abs=1e-7)


def test_lpips_pcdms_reads_resizes_and_scales_as_the_pcdms_script(tiny_models, tmp_path):
    """PCDMs' metrics.py: imread, float32, cv2.resize(..., (176, 256), INTER_CUBIC) / 255, then
    LPIPS on those [0, 1] pixels as they are (the network expects [-1, 1])."""
    import cv2

    ours = Lpips(tiny_models, torch.device("cpu"))
    generated, target = _pairs(2)
    files = []
    for index, pixels in enumerate([*generated, *target]):
        files.append(tmp_path / f"{index}.png")
        image = Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).resize((352, 512))
        image.save(files[-1])
    script = lambda path: cv2.resize(np.asarray(Image.open(path)).astype(np.float32), (176, 256), interpolation=cv2.INTER_CUBIC) / 255.0  # noqa: E731
    as_batch = lambda paths: torch.from_numpy(np.stack([script(p) for p in paths]).transpose(0, 3, 1, 2)).float()  # noqa: E731
    with torch.no_grad():
        expected = ours.model(as_batch(files[:2]), as_batch(files[2:])).flatten()
    read = lambda paths: torch.stack([pcdms_pixels(p, (176, 256)) for p in paths])  # noqa: E731
    got = ours(read(files[:2]), read(files[2:]), as_pcdms=True)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, ours(read(files[:2]), read(files[2:])), atol=1e-3)  # not our LPIPS


def test_lpips_pcdms_averages_whole_batches_of_64_in_name_order():
    values = {f"pair{index:03d}": float(index) for index in range(130)}
    assert pcdms_batches(values) == [float(index) for index in range(128)]
    few = {name: value for name, value in values.items() if value < 50}
    assert pcdms_batches(few) == sorted(few.values())


def test_no_result_with_a_ground_truth_is_one_line_and_writes_nothing(tmp_path, capsys):
    from oneposetrans.cli import main

    results, truth = tmp_path / "results", tmp_path / "truth"
    (results / "reposed_final_result").mkdir(parents=True)
    truth.mkdir()
    Image.new("RGB", (176, 256)).save(results / "reposed_final_result" / "a_to_b.png")
    Image.new("RGB", (176, 256)).save(truth / "c.png")
    assert main(["evaluate", "--results", str(results), "--ground-truth", str(truth), "--smoke", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none of its 1 result(s) has a ground truth in" in err and "b.png" in err
    assert not (results / "evaluation").exists()


def test_unknown_metric_is_one_line():
    with pytest.raises(BadInputError, match="known metrics"):
        parse_metrics("ssim,fidd")


def test_evaluate_writes_json_table_and_report(tmp_path, cli_env):
    results, truth = tmp_path / "results", tmp_path / "truth"
    for folder in ("reposed_final_result", "images", "images_rgba", "poses"):
        (results / folder).mkdir(parents=True)
    truth.mkdir()
    photo = Image.fromarray(data.astronaut()).resize((352, 512))
    rng = np.random.default_rng(0)
    for index in range(5):
        target = Image.fromarray(np.roll(np.asarray(photo), 8 * index, axis=1))
        target.save(truth / f"t{index}.jpg")
        alpha = np.zeros((512, 352), np.uint8)
        alpha[100:450, 80:280] = 255
        Image.fromarray(np.dstack([np.asarray(target), alpha]), "RGBA").save(results / "images_rgba" / f"t{index}.png")
        noisy = np.clip(np.asarray(target, np.float64) + rng.normal(0, 10 * (index + 1), (512, 352, 3)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).resize((1024, 1024)).save(results / "reposed_final_result" / f"src_to_t{index}.png")
    photo.save(results / "images" / "src.png")
    Image.new("RGB", (64, 64)).save(results / "reposed_final_result" / "src_to_orphan.png")

    ran = subprocess.run(
        [sys.executable, "-m", "oneposetrans", "evaluate", "--results", str(results), "--ground-truth", str(truth), "--smoke"],
        cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = json.loads((results / "evaluation" / "metrics.json").read_text())
    summary, per_pair = report["summary"], report["per_pair"]
    assert summary["pairs"] == 5 and summary["size"] == "256x176"
    for metric in ("ssim", "ssim_256", "psnr", "lpips", "lpips_pcdms", "masked_ssim", "masked_psnr", "masked_lpips", "fid", "fid_standard"):
        assert np.isfinite(summary[metric]), metric
    assert summary["lpips_pcdms_pairs"] == 5
    assert any("orphan" in problem for problem in report["problems"])
    # More noise, lower PSNR: the per-pair numbers belong to their pairs.
    values = [per_pair[f"src_to_t{i}"]["psnr"] for i in range(5)]
    assert values == sorted(values, reverse=True)
    table = (results / "evaluation" / "metrics.md").read_text()
    assert table.startswith("| pairs | size | ssim ↑") and "| 5 | 256x176 |" in table
    page = (results / "evaluation" / "report.html").read_text()
    assert "Best cases" in page and "Worst cases" in page and page.count("data:image/png;base64,") >= 6
    # A smoke run's numbers come from random weights, and every output says so.
    assert "these numbers mean nothing" in summary["warning"] and "these numbers mean nothing" in table and "these numbers mean nothing" in page


def test_community_fid_feeds_inception_exactly_as_cfld(tiny_models):
    """CFLD's forward_inception: bilinear 299x299, then x * (std / 0.5) + (mean - 0.5) / 0.5 per
    channel on [0, 1] pixels (written out here as CFLD writes it), then the Inception blocks."""
    features = InceptionFeatures(tiny_models, torch.device("cpu"), "community")
    images = torch.rand(2, 3, 256, 176, generator=torch.Generator().manual_seed(0))
    x = F.interpolate(images, size=(299, 299), mode="bilinear")
    x[:, 0] = x[:, 0] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
    x[:, 1] = x[:, 1] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
    x[:, 2] = x[:, 2] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
    assert torch.allclose(community_inception_input(images), x, atol=1e-6)
    with torch.no_grad():
        expected = features.model(x).double().numpy()
        imagenet_normalised = (F.interpolate(images, size=(299, 299), mode="bilinear") - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        textbook = features.model(imagenet_normalised).double().numpy()
    ours = features(images)
    # The tiny kit's random Inception gives small features: compare relative to their size.
    scale = np.linalg.norm(expected)
    assert np.linalg.norm(ours - expected) <= 1e-5 * scale
    assert np.linalg.norm(ours - textbook) > 0.05 * scale  # the transform matters to the features


def test_sizes_parse_as_height_by_width_or_native():
    assert parse_size("256x176") == (176, 256) and parse_size("512x352") == (352, 512)
    assert parse_size("1024x768") == (768, 1024)
    assert parse_size("native") is None
    for bad in ("256", "256x", "x176", "0x176", "big"):
        with pytest.raises(BadInputError, match="HEIGHTxWIDTH"):
            parse_size(bad)


def test_native_size_scores_each_pair_at_its_ground_truth_frame(tmp_path, tiny_models):
    """WPose frames differ per photo: each pair is scored at its own ground truth's size."""
    results, truth = tmp_path / "results", tmp_path / "truth"
    (results / "reposed_final_result").mkdir(parents=True)
    truth.mkdir()
    photo = Image.fromarray(data.astronaut())
    frames = {"a": (300, 400), "b": (256, 192), "c": (300, 400)}
    for name, frame in frames.items():
        target = photo.resize(frame)
        target.save(truth / f"{name}.png")
        # A result at 1024x1024 that is the ground truth stretched: at the native frame it comes back almost exact.
        target.resize((1024, 1024), Image.BICUBIC).save(results / "reposed_final_result" / f"src_to_{name}.png")
    seen = []
    request = EvaluationRequest(results, truth, tiny_models, size="native", metrics=("psnr", "fid"), batch_size=8, device="cpu")
    original = evaluate_module.psnr
    evaluate_module.psnr = lambda g, t: seen.append(tuple(g.shape[-2:])) or original(g, t)
    try:
        summary = evaluate(request, echo=lambda _: None)
    finally:
        evaluate_module.psnr = original
    assert sorted(seen) == [(192, 256), (400, 300)]  # one batch per frame, each at the truth's (H, W)
    assert summary["size"] == "native" and summary["pairs"] == 3 and np.isfinite(summary["fid"])
    assert summary["psnr"] > 25
