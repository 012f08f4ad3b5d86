"""The Gradio demo: driven end to end in headless Chromium, and visitors kept apart."""

import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from oneposetrans.cli import build_parser
from oneposetrans.demo import DemoConfig, DemoSteps, page_errors
from oneposetrans.pose import BUNDLED_POSES
from tests.conftest import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"


def _steps(tiny_models, workdir):
    return DemoSteps(DemoConfig(tiny_models, workdir, "cpu", resolution=128, finetune_resolution=128, finetune_steps=3, denoise_steps=2))


def test_defaults_bind_loopback_without_a_share_link():
    arguments = build_parser().parse_args(["demo"])
    assert arguments.host == "127.0.0.1" and arguments.share is False


def test_smoke_page_says_its_pictures_are_noise(tmp_path):
    from oneposetrans.demo import SMOKE_NOTICE, build_demo

    for smoke in (True, False):
        page = build_demo(DemoSteps(DemoConfig(tmp_path, tmp_path, smoke=smoke)))
        texts = [block.value for block in page.blocks.values() if isinstance(block, gr.Markdown)]
        assert (SMOKE_NOTICE in texts) is smoke


def _files(root: Path) -> dict[str, bytes]:
    """Every file of a visitor's tree but the logs (they hold times)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.parent.name != "logs"}


def test_two_concurrent_visitors_get_separate_folders_and_the_results_they_get_alone(tiny_models, tmp_path):
    """Isolation, and results that depend only on the inputs: two flows at once write the same
    bytes as each flow alone (the photos are not square, so the LoRA's crops are drawn)."""
    steps = _steps(tiny_models, tmp_path / "work")
    photos = {}
    for name, colour in (("red", (230, 110, 40)), ("blue", (40, 110, 230))):
        pixels = np.full((256, 192, 3), 120, np.uint8)
        pixels[40:240, 50:140] = (230, 110, 40)  # the person the tiny detector finds
        pixels[:20] = colour  # what tells the two photos apart
        photos[name] = tmp_path / f"{name}.png"
        Image.fromarray(pixels).save(photos[name])
    visitors, errors = {}, []

    def session(name):
        try:
            visitor = steps.new_visitor()
            visitors[name] = visitor
            steps.upload(visitor, str(photos[name]))
            steps.segment(visitor, False)
            steps.finetune(visitor, f"A woman with face, {name} coat")
            steps.poses(visitor, [str(BUNDLED_POSES[0])])
            steps.repose(visitor)
            steps.background(visitor, None)
            steps.composite(visitor, False)
        except Exception as error:  # reported below, with the visitor's name
            errors.append((name, error))

    stop = threading.Event()

    def queue():
        """What Gradio's queue and other threads do meanwhile: draw from the global generators."""
        while not stop.is_set():
            random.shuffle(list(range(8)))
            torch.randn(8)

    threads = [threading.Thread(target=session, args=(name,)) for name in photos]
    for thread in [*threads, threading.Thread(target=queue, daemon=True)]:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    stop.set()
    assert not errors, errors
    red, blue = visitors["red"].tree.root, visitors["blue"].tree.root
    assert red != blue and red.parent == blue.parent == tmp_path / "work"
    for root, name in ((red, "red"), (blue, "blue")):
        source = np.asarray(Image.open(root / "images" / "source.png"))
        assert tuple(source[5, 5]) == ((40, 110, 230) if name == "blue" else (230, 110, 40))
        assert len(list((root / "reposed_final_result").glob("*.png"))) == 1
        person = np.asarray(Image.open(root / "images_rgba" / "source.png"))[..., 3] > 127
        assert 0.25 < person.mean() < 0.5  # the mask preview shows the orange figure, not the photo
    assert visitors["red"].caption.endswith("red coat") and visitors["blue"].caption.endswith("blue coat")
    together = {name: _files(visitor.tree.root) for name, visitor in visitors.items()}
    for name in photos:
        session(name)  # alone, one after the other
        assert not errors, errors
        alone = _files(visitors[name].tree.root)
        assert alone.keys() == together[name].keys() and "lora/source.safetensors" in alone
        assert [f for f in alone if alone[f] != together[name][f]] == []


def test_a_visitor_folder_is_made_at_the_first_file_and_goes_with_the_session(tiny_models, tmp_path):
    steps = _steps(tiny_models, tmp_path / "work")
    visitor = steps.new_visitor()
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(gr.Error, match="not an image file"):
        page_errors(steps.upload)(visitor, str(tmp_path / "notes.png"))
    with pytest.raises(gr.Error, match="upload a photo first"):
        page_errors(steps.segment)(visitor, False)
    assert not (tmp_path / "work").exists()
    grey = tmp_path / "grey.png"
    Image.new("RGB", (200, 150), (128, 128, 128)).save(grey)
    steps.upload(visitor, str(grey))
    assert (visitor.tree.root / "images" / "source.png").is_file()
    steps.end_visit(visitor)  # a --workdir the user named: kept
    assert visitor.tree.root.is_dir()
    DemoSteps(steps.config, forget_visitors=True).end_visit(visitor)
    assert not visitor.tree.root.exists()


def test_the_demo_cleans_up_when_stopped_and_names_its_own_share_flag(tiny_models, tmp_path, cli_env):
    """Without --workdir, everything the demo writes (visitors' folders, Gradio's cache) is in
    one temporary folder, removed on SIGTERM; the start-up lines name our --share flag."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "oneposetrans", "demo", "--smoke", "--device", "cpu", "--port", str(port)],
        cwd=REPO, env={**cli_env, "TMPDIR": str(scratch), "GRADIO_ANALYTICS_ENABLED": "False"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    try:
        for line in server.stdout:
            lines.append(line)
            if line.startswith("visitors' folders in"):
                break
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).status == 200
        assert len(list(scratch.glob("oneposetrans-demo-*"))) == 1
    finally:
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=60)
    output = "".join(lines) + rest
    assert server.returncode == 0, output
    assert f"demo at http://127.0.0.1:{port}" in output and "--share" in output and "share=True" not in output
    assert "demo stopped" in output and list(scratch.glob("oneposetrans-demo-*")) == []


def test_messages_in_the_page_name_files_without_the_servers_folders():
    from oneposetrans.demo import without_server_paths

    assert without_server_paths("/tmp/oneposetrans-demo-x/gradio/3f/me.jpg: not an image file") == "me.jpg: not an image file"
    assert without_server_paths("paste: 2 without a person (/srv/r/logs/segment.jsonl); 0 done") == "paste: 2 without a person (segment.jsonl); 0 done"
    caption = 'the caption must read "A man/woman with face, <clothes and accessories>"'
    assert without_server_paths(caption) == caption


def test_bad_input_becomes_a_message_in_the_page(tiny_models, tmp_path):
    steps = _steps(tiny_models, tmp_path / "work")
    visitor = steps.new_visitor()
    grey, text = tmp_path / "grey.png", tmp_path / "notes.png"
    Image.new("RGB", (200, 150), (128, 128, 128)).save(grey)
    text.write_text("hello")
    with pytest.raises(gr.Error, match="not an image file"):
        page_errors(steps.upload)(visitor, str(text))
    steps.upload(visitor, str(grey))
    with pytest.raises(gr.Error, match="no person found"):
        page_errors(steps.segment)(visitor, False)
    with pytest.raises(gr.Error, match="fine-tune first"):
        page_errors(steps.repose)(visitor)
    missing = DemoSteps(DemoConfig(tmp_path / "no-models", tmp_path / "work2", "cpu"))
    with pytest.raises(gr.Error, match="missing model 'grounding-dino'"):
        page_errors(missing.segment)(visitor, False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.e2e
def test_whole_flow_in_headless_chromium(tiny_models, tmp_path, cli_env):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        pytest.skip(f"the Playwright client is not installed ({error})")
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed here (.ci/run installs Debian's chromium where apt-get works)")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "oneposetrans", "demo", "--smoke", "--device", "cpu", "--port", str(port), "--workdir", str(tmp_path / "work")],
        cwd=REPO, env={**cli_env, "GRADIO_ANALYTICS_ENABLED": "False"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the demo did not start: " + server.stdout.read()[-2000:] if server.poll() is not None else "timeout")
        photo, grey = tmp_path / "astronaut.png", tmp_path / "grey.png"
        Image.fromarray(data.astronaut()).save(photo)
        Image.new("RGB", (200, 150), (128, 128, 128)).save(grey)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
            )
            # A first visitor with a photo without a person: the page says so.
            other = browser.new_page()
            other.goto(url)
            other.locator("#photo input[type=file]").set_input_files(str(grey))
            other.wait_for_timeout(1000)
            other.click("#segment")
            other.get_by_text("no person found").first.wait_for(timeout=60000)
            other.close()
            # Bad files through the page: each is the demo's own line, naming the file by its name only.
            bad = {name: tmp_path / name for name in ("notes.png", "empty.png", "nan.json", "huge.json")}
            bad["notes.png"].write_text("hello")
            bad["empty.png"].write_bytes(b"")
            for name, canvas, value in (("nan.json", 512, float("nan")), ("huge.json", 100000, 10.0)):
                keypoints = [value, 10.0, 1.0] + [10.0, 10.0, 1.0] * 17
                bad[name].write_text(json.dumps({"canvas_width": canvas, "canvas_height": canvas, "people": [{"pose_keypoints_2d": keypoints}]}))
            for field, name, message, button in (
                ("#photo", "notes.png", "notes.png: not an image file", None),
                ("#photo", "empty.png", "empty.png: empty file", None),
                ("#background-upload", "notes.png", "notes.png: not an image file", "#background"),
                ("#poses", "nan.json", "nan.json: person 0, joint 0: not a finite number", "#load-poses"),
                ("#poses", "huge.json", "huge.json: canvas 100000x100000", "#load-poses"),
            ):
                other = browser.new_page()
                other.goto(url)
                other.locator(f"{field} input[type=file]").set_input_files(str(bad[name]))
                other.wait_for_timeout(1000)
                if button:
                    other.click(button)
                other.get_by_text(message).first.wait_for(timeout=30000)
                shown = " ".join(other.locator(".toast-body").all_inner_texts())
                assert message in shown and "/" + name not in shown and str(tmp_path) not in shown, shown
                other.close()
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.goto(url)
            page.locator("#photo input[type=file]").set_input_files(str(photo))
            # A click on the shown photo is a SAM point prompt.
            page.locator("#photo-view img").click(position={"x": 60, "y": 60}, timeout=30000)
            page.wait_for_function("document.querySelector('#clicks textarea').value.startsWith('1 click(s): (')", timeout=30000)
            page.click("#segment-clicks")
            page.wait_for_selector("#mask img", timeout=60000)
            page.click("#segment")
            page.wait_for_timeout(1000)
            page.wait_for_selector("#mask img", timeout=60000)
            page.fill("#caption textarea", "A woman with face, orange spacesuit, white gloves")
            page.click("#finetune")
            page.wait_for_function("document.querySelector('#finetune-status textarea').value.includes('LoRA')", timeout=180000)
            page.locator("#poses input[type=file]").set_input_files([str(p) for p in BUNDLED_POSES])
            page.wait_for_timeout(1000)
            page.click("#load-poses")
            page.wait_for_selector("#pose-gallery img", timeout=60000)
            page.click("#repose")
            page.wait_for_selector("#results img", timeout=180000)
            page.wait_for_function("document.querySelector('#repose-notes textarea').value.includes('face')", timeout=30000)
            page.click("#background")
            page.wait_for_selector("#background-view img", timeout=60000)
            page.click("#composite")
            page.wait_for_selector("#final img", timeout=60000)
            assert page.locator("#final img").count() == len(BUNDLED_POSES)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
            browser.close()
        finals = list((tmp_path / "work").glob("*/reposed_final_result/*.png"))
        assert len(finals) == len(BUNDLED_POSES)
    finally:
        server.terminate()
        log, _ = server.communicate(timeout=30)
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("profile", ["default", "reference"])
def test_the_demo_does_what_the_repose_command_does(profile, tiny_models, astronaut_tree, tmp_path):
    """Same photo, LoRA and pose: the demo's result and composite are the command's, bit for bit,
    in each profile (the reference paste re-segments the result with GroundingDINO and SAM in both,
    which find the kit decoder's orange "person")."""
    from oneposetrans.cli import main
    from oneposetrans.demo import SOURCE_NAME
    from oneposetrans.repose import BUNDLED_CAPTION
    from tests.conftest import seeded_tree

    pose = BUNDLED_POSES[0]
    command = seeded_tree(astronaut_tree, tmp_path / "command")
    code = main(["repose", "--smoke", "--device", "cpu", "--quiet", "--out", str(command), "--pose", str(pose),
                 "--steps", "1", "--resolution", "64", "--profile", profile])
    steps = DemoSteps(DemoConfig(tiny_models, tmp_path / "work", "cpu", profile=profile, resolution=64, denoise_steps=1))
    visitor = steps.new_visitor()
    for path in astronaut_tree.rglob("astronaut.*"):  # the same source and LoRA, under the demo's name
        target = visitor.writable().root / path.relative_to(astronaut_tree).with_name(path.name.replace("astronaut", SOURCE_NAME))
        shutil.copyfile(path, target)
    visitor.caption = BUNDLED_CAPTION
    steps.poses(visitor, [str(pose)])
    steps.repose(visitor)
    steps.background(visitor, None)
    name = f"{pose.stem}.png"
    demo_result = np.asarray(Image.open(visitor.tree.file("reposed_result", f"{SOURCE_NAME}_to_{name}")))
    assert (demo_result == np.asarray(Image.open(command / "reposed_result" / f"astronaut_to_{name}"))).all()
    assert code == 0
    final = steps.composite(visitor, False)[0]
    assert (np.asarray(final) == np.asarray(Image.open(command / "reposed_final_result" / f"astronaut_to_{name}"))).all()
