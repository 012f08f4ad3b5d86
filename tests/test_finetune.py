"""Test-time LoRA fine-tuning on the tiny kit (issue 4 acceptance)."""

import json
import signal
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from oneposetrans.cli import main
from oneposetrans.errors import BadInputError, CaseFailures
from oneposetrans.finetune import ADAPTER, FinetuneCase, FinetuneSettings, FinetuneStage, LoraTrainer, _CaseDraws, initialise_lora
from oneposetrans.profiles import DEFAULT, REFERENCE
from oneposetrans.results import ResultsTree
from tests.conftest import REPO

FAST = dict(resolution=64, steps=4)


def run_finetune(cases, tree, models, settings):
    """Step 3 as every flow runs it: the fine-tuning stage through the one stage driver."""
    from oneposetrans.session import Session
    from oneposetrans.stages import run_stage

    session = Session(models, "cpu", echo=lambda _: None)
    return run_stage(FinetuneStage(tree, settings), cases, session, tree.log("finetune"), echo=lambda _: None, progress=False)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def trainer(tiny_models):
    return LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(**FAST), "cpu")


def _case(photo, name="astronaut", caption="A woman with face, orange spacesuit"):
    return FinetuneCase(name, [photo], caption)


@torch.no_grad()
def _fixed_batch_loss(trainer, photo, caption):
    """Epsilon-MSE on a fixed centre crop with fixed noise and timesteps (8 of them)."""
    generator = torch.Generator().manual_seed(123)
    size = trainer.settings.resolution
    image = Image.open(photo).convert("RGB").resize((size, size), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    latents = trainer.vae.encode(pixels).latent_dist.mean * trainer.vae.config.scaling_factor
    latents = latents.expand(8, -1, -1, -1)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.linspace(50, 950, 8).long()
    embeds, pooled = trainer.encode_caption(caption)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * 8, dtype=torch.float32)
    prediction = trainer.unet(
        trainer.noise_scheduler.add_noise(latents, noise, timesteps),
        timesteps,
        encoder_hidden_states=embeds.expand(8, -1, -1),
        added_cond_kwargs={"text_embeds": pooled.expand(8, -1), "time_ids": time_ids},
    ).sample
    return torch.nn.functional.mse_loss(prediction, noise).item()


@pytest.mark.parametrize("learning_rate,min_drop", [(1e-3, 0.0), (1e-2, 0.03)])
def test_loss_falls_over_60_steps_on_a_fixed_image(tiny_models, photo, learning_rate, min_drop):
    # At the published lr the tiny random UNet moves slowly (about -0.1 %); at 1e-2 the same
    # 60 steps show clearly that the adapter learns the image (about -8 %).
    trainer = LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(resolution=64, learning_rate=learning_rate), "cpu")
    caption = "A woman with face, orange spacesuit"
    losses = trainer.train(_case(photo, caption=caption)).losses
    assert len(losses) == 60
    trained = _fixed_batch_loss(trainer, photo, caption)
    trainer.unet.disable_adapters()  # gaussian init starts with B = 0, i.e. the base model
    untrained = _fixed_batch_loss(trainer, photo, caption)
    trainer.unet.enable_adapters()
    trainer.discard()
    assert trained < untrained * (1 - min_drop), (trained, untrained)


def _pipeline(tiny_models, unet=None):
    from diffusers import StableDiffusionXLPipeline

    extra = {"unet": unet} if unet is not None else {}
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models / "RealVisXL_V4.0", local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe):
    return pipe(
        "A woman with face, orange spacesuit",
        height=64,
        width=64,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]


def test_saved_lora_loads_in_stock_diffusers_bit_identical(tiny_models, photo, trainer, tmp_path):
    trainer.train(_case(photo))
    in_memory = _generate(_pipeline(tiny_models, unet=trainer.unet))
    path = trainer.save(tmp_path / "astronaut.safetensors")
    keys = load_file(path).keys()
    assert all(k.startswith("unet.") and (".lora.down." in k or ".lora.up." in k) for k in keys)
    assert any("up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k" in k for k in keys)

    base = _generate(_pipeline(tiny_models))
    loaded_pipe = _pipeline(tiny_models)
    loaded_pipe.load_lora_weights(tmp_path, weight_name="astronaut.safetensors", adapter_name="subject")
    loaded = _generate(loaded_pipe)
    assert np.array_equal(loaded, in_memory)
    assert np.abs(loaded - base).max() > 1e-3


def test_cases_are_independent_of_training_order(tiny_models, photo, trainer, tmp_path):
    trainer.train(_case(photo, caption="A man with face, hat"))
    trainer.save(tmp_path / "first.safetensors")
    trainer.train(_case(photo))
    after = trainer.lora_state_dict()
    trainer.discard()
    fresh = LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(**FAST), "cpu")
    fresh.train(_case(photo))
    alone = fresh.lora_state_dict()
    assert after.keys() == alone.keys() and all(torch.equal(after[k], alone[k]) for k in after)


@pytest.mark.parametrize("profile", [DEFAULT, REFERENCE], ids=["default", "reference"])
def test_a_lora_does_not_depend_on_other_threads_drawing_from_the_global_generators(tiny_models, tmp_path, profile):
    """The demo's queue (Gradio) shuffles with Python's global generator while a visitor's LoRA
    trains, and any thread may draw from torch's; every draw of a case comes from the case's own
    generators, so the LoRA is the same."""
    import threading

    trainer = LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(**FAST), "cpu", profile)
    photo = tmp_path / "tall.png"  # not square: the crop's place is drawn
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (160, 64, 3), np.uint8)).save(photo)
    trainer.train(_case(photo))
    alone = trainer.lora_state_dict()
    trainer.discard()
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            random.shuffle(list(range(8)))
            torch.randn(8)

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        trainer.train(_case(photo))
    finally:
        stop.set()
        thread.join()
    beside = trainer.lora_state_dict()
    trainer.discard()
    assert alone.keys() == beside.keys() and all(torch.equal(alone[k], beside[k]) for k in alone)


def test_the_lora_starts_as_set_seed_then_peft_would_start_it(tiny_models):
    """The case's generator redraws peft's "gaussian" start in peft's order: the same weights as
    the published ``set_seed(seed)`` then ``add_adapter``, without touching the global state."""
    from peft import LoraConfig

    trainer = LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(**FAST), "cpu")
    config = dict(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    torch.manual_seed(7)
    trainer.unet.add_adapter(LoraConfig(**config), adapter_name=ADAPTER)
    published = {k: v.clone() for k, v in trainer.lora_state_dict().items()}
    trainer.discard()
    trainer.unet.add_adapter(LoraConfig(**config), adapter_name=ADAPTER)
    before = torch.get_rng_state()
    initialise_lora(trainer.unet, torch.Generator().manual_seed(7))
    ours = trainer.lora_state_dict()
    trainer.discard()
    assert torch.equal(torch.get_rng_state(), before)
    assert published.keys() == ours.keys() and any(v.abs().sum() > 0 for v in ours.values())
    assert all(torch.equal(published[k], ours[k]) for k in published)


def test_profiles_differ_in_pooled_embedding_and_time_ids(tiny_models):
    reference = LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(**FAST), "cpu", REFERENCE)
    default = LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(**FAST), "cpu")
    caption = "A woman with face, red coat"
    ref_embeds, ref_pooled = reference.encode_caption(caption)
    def_embeds, def_pooled = default.encode_caption(caption)
    assert torch.equal(ref_embeds, def_embeds) and ref_embeds.shape[1] == 77
    projected = default.text_encoders[1].text_projection(ref_pooled)
    assert torch.allclose(def_pooled, projected) and not torch.allclose(def_pooled, ref_pooled)
    # Published quirk: (W, H, 0, 0, W, H) of the full photo; default: (H, W, top, left, crop, crop).
    assert reference._time_ids((750, 1101), [30, 0]) == [750, 1101, 0, 0, 750, 1101]
    assert default._time_ids((750, 1101), [30, 0]) == [1101, 750, 30, 0, 64, 64]


def test_reference_crops_are_the_published_torchvision_transforms(tiny_models):
    """Resize(512) truncates the long side (750x1101 -> 512x751, where rounding gives 752) and
    RandomCrop draws from torch's generator: the case's generator, seeded alike, gives the
    published crop, bit for bit."""
    from torchvision import transforms

    settings = FinetuneSettings(resolution=512, **{k: v for k, v in FAST.items() if k != "resolution"})
    trainer = LoraTrainer.from_models_dir(tiny_models, settings, "cpu", REFERENCE)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1101, 750, 3), np.uint8))
    published = transforms.Compose([
        transforms.Resize(512, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.RandomCrop(512),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.5]),
    ])
    torch.manual_seed(0)
    expected = [published(photo) for _ in range(2)]
    draws = _CaseDraws(0, torch.device("cpu"))  # seeded as set_seed(0) seeds torch's global generator
    ours = [trainer._augment(photo, None, draws) for _ in range(2)]
    assert all(torch.equal(pixels, wanted) for (pixels, _, _), wanted in zip(ours, expected))
    assert transforms.Resize(512)(photo).size == (512, 751)
    assert ours[0][2] != ours[1][2]  # two draws, two crops (top, left)


def test_reference_vae_encodes_in_the_training_precision_with_bf16_rounded_weights(tiny_models):
    """The published trainer loaded the VAE with torch_dtype=bfloat16 and then moved it to fp16."""
    from diffusers import AutoencoderKL

    half = dict(FAST, mixed_precision="fp16")
    reference = LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(**half), "cpu", REFERENCE).vae
    files = AutoencoderKL.from_pretrained(tiny_models / "RealVisXL_V4.0", subfolder="vae").state_dict()
    assert reference.dtype == torch.float16
    rounded = {name: weight.to(torch.bfloat16).to(torch.float16) for name, weight in files.items()}
    assert all(torch.equal(value, rounded[name]) for name, value in reference.state_dict().items())
    assert any(not torch.equal(rounded[name], files[name].half()) for name in files)  # bf16 rounding is visible
    assert LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(**half), "cpu").vae.dtype == torch.float32


@pytest.mark.parametrize("profile", [REFERENCE, DEFAULT], ids=lambda p: p.name)
def test_time_ids_keep_sides_over_2048_exact_in_half_precision(tiny_models, tmp_path, profile):
    large = tmp_path / "large.png"
    Image.new("RGB", (2049, 2051), (200, 90, 40)).save(large)
    trainer = LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(**dict(FAST, steps=1, mixed_precision="fp16")), "cpu", profile)
    seen = []
    forward = trainer.unet.forward

    def spy(*args, added_cond_kwargs, **kwargs):
        seen.append(added_cond_kwargs["time_ids"].clone())
        return forward(*args, added_cond_kwargs=added_cond_kwargs, **kwargs)

    trainer.unet.forward = spy
    trainer.train(FinetuneCase("large", [large], "A woman with face, orange spacesuit"))
    sides = {int(value) for value in seen[0].flatten()}
    assert {2049, 2051} <= sides and seen[0].dtype == torch.long  # fp16 would give 2048 and 2052


def _train(tiny_models, photo, fast_step: bool, **settings):
    # The default profile with the published step or the fast one: only the step differs.
    trainer = LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(resolution=64, steps=12, **settings), "cpu", DEFAULT.replace(fast_step=fast_step))
    trained = trainer.train(_case(photo))
    return np.array(trained.losses), trainer.lora_state_dict()


def _learned_difference(first: dict, second: dict) -> float:
    """Distance of the trained up-projections (zero at initialisation), relative to their size."""
    ups = [k for k in first if "lora.up" in k]
    return float(sum(((first[k] - second[k]) ** 2).sum() for k in ups).sqrt() / sum((first[k] ** 2).sum() for k in ups).sqrt())


def test_fast_step_equals_the_published_step_in_fp32(tiny_models, photo):
    """fp32 masters are the weights themselves: only fused against per-tensor AdamW differs."""
    plain_losses, plain = _train(tiny_models, photo, fast_step=False)
    fast_losses, fast = _train(tiny_models, photo, fast_step=True)
    assert np.abs(fast_losses - plain_losses).max() <= 1e-6 * np.abs(plain_losses).max()
    assert _learned_difference(plain, fast) <= 1e-4


def test_fast_step_in_bf16_stays_within_the_precision_noise(tiny_models, photo):
    """bf16 LoRA weights with fp32 masters and no autocast, against the published fp32 weights under
    autocast: the learned update differs by at most 5 %, less than half of what bf16 itself moves
    the published step away from fp32."""
    plain_losses, plain = _train(tiny_models, photo, fast_step=False, mixed_precision="bf16")
    fast_losses, fast = _train(tiny_models, photo, fast_step=True, mixed_precision="bf16")
    _, full = _train(tiny_models, photo, fast_step=False, mixed_precision="no")
    assert np.abs(fast_losses - plain_losses).max() <= 2e-3 * np.abs(plain_losses).max()
    assert _learned_difference(plain, fast) <= 0.05
    assert _learned_difference(plain, fast) < 0.5 * _learned_difference(full, plain)
    assert all(value.dtype == torch.float32 for value in fast.values())  # saved from the fp32 masters' copy


def test_profiles_choose_the_step(tiny_models, photo, monkeypatch):
    """Reference: the published fp32 weights under autocast and torch's default AdamW; default: fused."""
    chosen = []
    original = torch.optim.AdamW.__init__
    monkeypatch.setattr(torch.optim.AdamW, "__init__", lambda self, params, **kw: chosen.append(kw["fused"]) or original(self, params, **kw))
    for profile in (REFERENCE, DEFAULT):
        LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(**FAST), "cpu", profile).train(_case(photo))
    assert chosen == [None, True]


def test_fixed_shape_step_never_waits_for_the_host(tiny_models, photo, tmp_path, monkeypatch):
    """What a CUDA graph captures must not read a value back (``.item()``, a tensor's truth value)
    nor build tensors from host data: the fast step's inputs are all made before the loop. Counted
    with a dispatch spy around each step, for the plain and the masked loss."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from oneposetrans import finetune

    class HostReads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.reads, self.ops = [], 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default):
                self.reads.append(str(func))
            return func(*args, **(kwargs or {}))

    spy = HostReads()
    run = finetune._FixedShapeStep._run

    def spied(self, *inputs):
        with spy:
            return run(self, *inputs)

    monkeypatch.setattr(finetune._FixedShapeStep, "_run", spied)
    mask = tmp_path / "mask.png"
    Image.new("L", Image.open(photo).size, 255).save(mask)
    for masked in (False, True):
        trainer = LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(masked_loss=masked, **FAST), "cpu")
        trainer.train(FinetuneCase("astronaut", [photo], "A woman with face, orange spacesuit", [mask]))
    assert spy.ops > 1000 and spy.reads == []
    # The spy does see host data made into a tensor (what the published loop does with its time ids).
    with spy:
        torch.tensor([[1.0, 2.0]])
    assert spy.reads


def test_multi_view_trains_one_lora(tiny_models, photo, tmp_path):
    mirrored = tmp_path / "mirrored.png"
    Image.open(photo).transpose(Image.FLIP_LEFT_RIGHT).save(mirrored)
    tree = ResultsTree(tmp_path / "results")
    case = FinetuneCase("person", [photo, mirrored], "A woman with face, orange spacesuit")
    report = run_finetune([case], tree, tiny_models, FinetuneSettings(**FAST))
    assert (report.done, report.skipped, report.failed) == (1, 0, 0)
    record = json.loads((tree.root / "logs" / "finetune.jsonl").read_text())
    assert record["views"] == 2 and record["steps"] == 4 and record["seconds"] > 0 and record["peak_memory_mb"] > 0
    assert (tree.root / "lora" / "person.safetensors").is_file()


def test_masked_loss_needs_and_uses_a_mask(tiny_models, photo, tmp_path):
    trainer = LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(masked_loss=True, **FAST), "cpu")
    with pytest.raises(BadInputError, match="person mask"):
        trainer.train(_case(photo))
    size = Image.open(photo).size

    def losses(fill) -> np.ndarray:
        mask = tmp_path / f"mask{fill}.png"
        image = Image.new("L", size, 0)
        image.paste(255, (0, 0, size[0], size[1] * fill // 2))  # fill 0: none, 1: the top half, 2: all
        image.save(mask)
        trained = trainer.train(FinetuneCase("a", [photo], "A woman with face, orange spacesuit", [mask])).losses
        trainer.discard()
        return np.array(trained)

    plain = np.array(LoraTrainer.from_models_dir(tiny_models, FinetuneSettings(**FAST), "cpu").train(_case(photo)).losses)
    np.testing.assert_allclose(losses(2), plain, rtol=1e-4)  # an all-person mask is the plain loss
    assert not losses(0).any()  # nothing of the person: nothing to learn
    half = losses(1)
    assert half.all() and np.abs(half - plain).max() > 1e-3 * plain.max()  # half the photo: another loss


def _dataset(tmp_path, photo, names=("a", "b", "c")):
    results = tmp_path / "results"
    (results / "images").mkdir(parents=True)
    for name in names:
        (results / "images" / f"{name}.png").write_bytes(photo.read_bytes())
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("from,to\n" + "".join(f"{n}.jpg,{names[0]}.jpg\n" for n in names) + f"{names[0]}.jpg,{names[1]}.jpg\n")
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(f"{i}/{n}.jpg/A woman with face, coat/scarf {i}\n" for i, n in enumerate(names)))
    return results, pairs, captions


def _finetune_cmd(results, pairs, captions, *extra):
    return [
        "-m", "oneposetrans", "finetune", "--smoke", "--dataset", "deepfashion", "--pairs", str(pairs),
        "--captions", str(captions), "--results", str(results), "--resolution", "64", *extra,
    ]


@pytest.mark.e2e
def test_resume_skips_done_and_bad_cases_fail_alone(tmp_path, photo, cli_env, capsys):
    results, pairs, captions = _dataset(tmp_path, photo, names=("a", "b", "c", "d"))
    (results / "images" / "c.png").write_text("not an image")
    captions.write_text("".join(line for line in captions.read_text().splitlines(True) if "/d.jpg/" not in line))
    first = subprocess.run(
        [sys.executable, *_finetune_cmd(results, pairs, captions, "--steps", "2")],
        cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300,
    )
    assert first.returncode == 1 and "Traceback" not in first.stderr

    def run(*extra):
        """The later runs in this process, through the same entry point."""
        main(_finetune_cmd(results, pairs, captions, "--steps", "2", *extra)[2:])
        return capsys.readouterr()

    assert "2 done, 0 skipped, 2 failed" in first.stdout
    log = (results / "logs" / "finetune.jsonl").read_text()
    assert "c.png: not an image file" in log and "d.jpg: no caption in" in log
    assert sorted(p.name for p in (results / "lora").iterdir()) == ["a.safetensors", "b.safetensors"]
    stamp = (results / "lora" / "a.safetensors").stat().st_mtime_ns

    second = run()
    assert "0 done, 2 skipped, 2 failed" in second.out
    assert (results / "lora" / "a.safetensors").stat().st_mtime_ns == stamp
    assert "2 done, 0 skipped, 1 failed" in run("--overwrite", "--fail-fast").out  # stops at c; d never tried


@pytest.mark.e2e
def test_killed_run_leaves_no_partial_lora_and_finishes_later(tmp_path, photo, cli_env):
    results, pairs, captions = _dataset(tmp_path, photo)
    process = subprocess.Popen(
        [sys.executable, *_finetune_cmd(results, pairs, captions, "--steps", "30")],
        cwd=REPO, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    lora = results / "lora"
    deadline = time.time() + 240
    while time.time() < deadline and not (lora.is_dir() and any(p.suffix == ".safetensors" for p in lora.iterdir())):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in lora.glob("*.safetensors")}
    assert 1 <= len(finished) < 3
    for name in finished:
        load_file(lora / name)  # complete files only
    # The kill needed a process; the rerun goes through the same entry point in this one.
    assert main(_finetune_cmd(results, pairs, captions, "--steps", "30")[2:]) == 0
    assert sorted(p.name for p in lora.iterdir()) == ["a.safetensors", "b.safetensors", "c.safetensors"]
    assert {n: (lora / n).stat().st_mtime_ns for n in finished} == finished
    assert not list(results.rglob("*.partial"))


@pytest.mark.e2e
def test_two_processes_train_each_lora_exactly_once(tmp_path, photo, cli_env):
    results, pairs, captions = _dataset(tmp_path, photo)
    # accelerate's --cpu launcher starts a single process (it needs MPI for more); --multi_gpu
    # runs torchrun, which on a machine without GPUs gives a multi-CPU world.
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
    ]
    ran = subprocess.run(
        [*launch, *_finetune_cmd(results, pairs, captions, "--steps", "2")],
        cwd=REPO, env={**cli_env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    records = [json.loads(line) for line in (results / "logs" / "finetune.jsonl").read_text().splitlines()]
    done = sorted(r["case"] for r in records if r["status"] == "done")
    assert done == ["a", "b", "c"]
    assert sorted(p.name for p in (results / "lora").iterdir()) == ["a.safetensors", "b.safetensors", "c.safetensors"]


def test_in_the_wild_form_needs_a_caption(photo, tmp_path, capsys):
    assert main(["finetune", "--source", str(photo), "--results", str(tmp_path)]) == 1
    assert "--source needs --caption" in capsys.readouterr().err


def test_failed_cases_raise_after_the_rest(tiny_models, photo, tmp_path):
    tree = ResultsTree(tmp_path)
    cases = [FinetuneCase("bad", [tmp_path / "missing.png"], "A man with face"), _case(photo, name="good")]
    with pytest.raises(CaseFailures, match="missing.png: no such file"):
        run_finetune(cases, tree, tiny_models, FinetuneSettings(**FAST))
    assert (tree.root / "lora" / "good.safetensors").is_file()


def test_dataset_captions_come_from_the_results_store_by_stem(tmp_path, photo, tiny_models):
    from oneposetrans.caption import CaptionStore

    results, pairs, _ = _dataset(tmp_path, photo, names=("a", "b"))
    store = CaptionStore(ResultsTree(results))
    store.put("a", "A woman with face, coat", origin="user")
    code = main(["finetune", "--smoke", "--pairs", str(pairs), "--results", str(results), "--resolution", "64", "--steps", "1"])
    assert code == 1  # b has no caption
    assert (results / "lora" / "a.safetensors").is_file() and not (results / "lora" / "b.safetensors").exists()
    assert "b.jpg: no caption in" in (results / "logs" / "finetune.jsonl").read_text()
