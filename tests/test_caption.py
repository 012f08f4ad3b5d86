"""Captions with a fake client: the network is never called."""

import json

import pytest
from PIL import Image

from oneposetrans.caption import CaptionStage, CaptionStore, conform, import_captions
from oneposetrans.cli import main
from oneposetrans.datasets import read_caption_lines
from oneposetrans.errors import CaseFailures
from oneposetrans.results import ResultsTree
from oneposetrans.session import Session
from oneposetrans.stages import run_stage


def run_captions(images, tree, captioner, sleep=lambda _: None):
    """Step 2 as every flow runs it: the caption stage through the one stage driver."""
    stage = CaptionStage(tree, captioner, sleep=sleep)
    return run_stage(stage, images, Session(None, "cpu", echo=print), tree.log("caption"), echo=lambda _: None, progress=False)


class RateLimited(Exception):
    code = 429


class FakeCaptioner:
    model = "fake-vlm"

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, image, instruction):
        assert "A man with face" in instruction and image.mode == "RGB"
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (32, 48), "white").save(folder / f"{name}.png")
    return sorted(folder.iterdir())


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("A woman with face, red coat, black boots", "A woman with face, red coat, black boots"),
        ("a man with a face red cap\n", "A man with face, red cap"),
        ("A young woman wearing a white/grey blouse.", "A woman with face, wearing a white grey blouse"),
        ('"A man, blue jeans"', "A man with face, blue jeans"),
        ("There is no person in this image, only a jacket.", None),
        ("A woman with face,", None),
    ],
)
def test_template_is_enforced(raw, expected):
    assert conform(raw) == expected


def test_resume_retry_and_flagging(tmp_path, images):
    tree = ResultsTree(tmp_path / "results")
    delays = []
    fake = FakeCaptioner(
        [RateLimited("quota"), RateLimited("quota"), "A woman with face, red coat", "Just a jacket.", "A man with face, cap"]
    )
    with pytest.raises(CaseFailures, match="b.png: the caption from fake-vlm does not fit"):
        run_captions(images, tree, fake, sleep=delays.append)
    assert delays == [2.0, 4.0]  # exponential backoff on the rate limit
    store = CaptionStore(tree)
    assert store.get("a") == "A woman with face, red coat" and store.get("c") == "A man with face, cap"
    assert store.get("b") is None  # flagged, never used

    again = FakeCaptioner(["A woman with face, green dress"])
    report = run_captions(images, tree, again, sleep=delays.append)
    assert (report.done, report.skipped, report.failed) == (1, 2, 0)
    assert again.calls == 1 and store.get("b") == "A woman with face, green dress"


def test_non_retryable_errors_fail_that_image_only(tmp_path, images):
    tree = ResultsTree(tmp_path / "results")
    fake = FakeCaptioner([ValueError("blocked by safety filter"), "A man with face, cap", "A man with face, hat"])
    with pytest.raises(CaseFailures):
        run_captions(images, tree, fake, sleep=lambda _: None)
    assert fake.calls == 3 and CaptionStore(tree).get("c") == "A man with face, hat"


def test_both_formats_round_trip(tmp_path):
    original = tmp_path / "descriptions.txt"
    original.write_text(
        "    0/fashionA.jpg/A woman with face, white/grey blouse\n"
        "    1/fashionB.jpg/This is a jacket\n"
        "    2/person_1_pexels2.png/A man with face, cap\n"
    )
    tree = ResultsTree(tmp_path / "results")
    assert import_captions(original, tree, echo=lambda _: None) == {"imported": 2, "flagged": 1}
    records = [json.loads(line) for line in (tree.root / "captions" / "captions.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == ["fashionA", "person_1_pexels2"]
    exported = tmp_path / "exported.txt"
    assert CaptionStore(tree).export_txt(exported) == 2
    assert read_caption_lines(exported) == [
        ("fashionA.jpg", "A woman with face, white grey blouse"),
        ("person_1_pexels2.png", "A man with face, cap"),
    ]
    again = ResultsTree(tmp_path / "again")
    import_captions(exported, again)
    assert CaptionStore(again).records() == {k: {**v, "origin": "import:exported.txt"} for k, v in CaptionStore(tree).records().items()}


def test_without_a_key_the_command_says_so_and_writes_no_key(tmp_path, monkeypatch, capsys, images):
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert main(["caption", "--images", str(images[0].parent), "--results", str(tmp_path / "r")]) == 1
    assert "no API key: set GEMINI_API_KEY or GOOGLE_API_KEY" in capsys.readouterr().err


def test_the_key_never_reaches_the_log(tmp_path, monkeypatch, images):
    secret = "AIza-test-secret-123"
    monkeypatch.setenv("GEMINI_API_KEY", secret)
    tree = ResultsTree(tmp_path / "results")
    fake = FakeCaptioner([RuntimeError(f"400 bad request for key={secret}")] + ["A man with face, cap"] * 2)
    with pytest.raises(CaseFailures):
        run_captions(images, tree, fake, sleep=lambda _: None)
    assert secret not in "".join(p.read_text() for p in tree.root.rglob("*") if p.is_file() and p.suffix in {".jsonl", ".txt"})


@pytest.fixture
def no_api_key(monkeypatch):
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_local_vlm_captions_offline_and_resumes(tmp_path, tiny_models, no_api_key, images, capsys):
    from oneposetrans.testing.tiny import TINY_VLM_ANSWER

    results = tmp_path / "results"
    command = ["caption", "--smoke", "--local-vlm", "--images", str(images[0].parent), "--results", str(results), "--device", "cpu"]
    assert main(command) == 0
    records = CaptionStore(ResultsTree(results)).records()
    assert {name: r["caption"] for name, r in records.items()} == {name: TINY_VLM_ANSWER for name in "abc"}
    assert {r["origin"] for r in records.values()} == {"local:SmolVLM-256M-Instruct"}
    assert main(command) == 0
    assert "0 done, 3 skipped" in capsys.readouterr().out


def test_a_local_vlm_answer_off_template_is_flagged(tmp_path, tiny_models, images):
    from oneposetrans.caption import LocalVLMCaptioner

    # Cut after a few tokens, the tiny model's answer stops before any garment: not a caption.
    captioner = LocalVLMCaptioner(tiny_models / "SmolVLM-256M-Instruct", "cpu", max_new_tokens=3)
    tree = ResultsTree(tmp_path / "results")
    with pytest.raises(CaseFailures, match="does not fit"):
        run_captions(images[:1], tree, captioner)
    assert CaptionStore(tree).records() == {}


def test_a_folder_that_is_not_a_model_is_one_line(tmp_path, images, capsys):
    command = ["caption", "--local-vlm", str(tmp_path), "--images", str(images[0].parent), "--results", str(tmp_path / "r")]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "not a transformers model folder" in err and "Traceback" not in err


def test_without_a_key_the_repose_command_captions_with_the_local_vlm(tmp_path, tiny_models, no_api_key):
    from oneposetrans.recipe import Recipe
    from oneposetrans.testing.tiny import TINY_VLM_ANSWER

    photo = tmp_path / "me.jpg"
    Image.new("RGB", (40, 60), "blue").save(photo)
    tree = ResultsTree(tmp_path / "out")
    Image.open(photo).save(tree.file("images", "me.png"))  # the source as the flow ingests it
    recipe = Recipe(tree, Session(tiny_models, "cpu"), echo=lambda _: None)
    caption, origin, resumed = recipe.caption_of("me", shown=str(photo))
    assert caption == TINY_VLM_ANSWER and origin == "by local:SmolVLM-256M-Instruct" and not resumed
    assert CaptionStore(tree).get("me") == TINY_VLM_ANSWER
