"""Captions: the text prompt of the Visual Consistency Module.

The method expects "A man/woman with face, <garments and accessories>": the word "face" is
where the face embedding is injected. Captions live in ``captions/captions.jsonl``, one JSON
object per image, keyed by the image's stem like every other file of the results tree
(``{"image": stem, "file": name, "caption": text, "origin": ...}``). The original
``index/name/text`` file format is read and written for compatibility.

A vision-language model writes them: Gemini through its official client, ``google-genai``
(the API key is read from the environment and never written anywhere), or, offline, a local
transformers image-text-to-text model folder (:class:`LocalVLMCaptioner`). The user may also
supply a captions file. Every caption is checked against the template: one that can be repaired is
repaired, one that cannot is flagged and never used.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Callable, Protocol

from PIL import Image

from oneposetrans import registry
from oneposetrans.datasets import read_caption_lines
from oneposetrans.errors import BadInputError, CaseError, MissingModelError, OnePoseTransError
from oneposetrans.image_io import load_image
from oneposetrans.profiles import DEFAULT, Profile
from oneposetrans.results import ResultsTree, stem, write_text_atomic
from oneposetrans.runtime import quiet_libraries, resolve_device, resolve_dtype
from oneposetrans.stages import Done, Stage

CAPTIONS_FILE = "captions.jsonl"
API_KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
DEFAULT_MODEL = "gemini-1.5-pro"

# The instruction given to the model (our wording of the published template's content).
INSTRUCTION = (
    "Describe the person in this photo for an image generator. First decide whether the person is a man "
    "or a woman. Then list briefly, separated by commas, what the person wears and carries: hat, glasses, "
    "upper clothes, outerwear, trousers or skirt, shoes, bag, jewellery and other accessories, each with "
    "its colour and pattern. Leave out items that are not visible. Answer with one line exactly in this "
    "form: 'A woman with face, <item>, <item>, ...' or 'A man with face, <item>, <item>, ...'. Examples: "
    "'A woman with face, white blouse, blue jeans, black ankle boots, silver necklace'; "
    "'A man with face, black cap, grey hoodie, khaki shorts, white sneakers'."
)

_CANONICAL = re.compile(r"^an?\s+(man|woman)\s+with\s+(?:a\s+)?face\s*,?\s*", re.IGNORECASE)
_REPAIRABLE = re.compile(r"^an?\s+(?:young\s+|old\s+|adult\s+)?(man|woman)\b[\s,:]*", re.IGNORECASE)


def conform(text: str) -> str | None:
    """The caption in template form, or None when it cannot be brought into that form.

    Newlines and "/" (the original file's field separator) are removed; "A woman wearing X"
    becomes "A woman with face, wearing X"; a caption about no man or woman is rejected.
    """
    text = " ".join(text.replace("/", " ").split()).strip().strip('"').strip("'").strip()
    match = _CANONICAL.match(text)
    if match is None:
        match = _REPAIRABLE.match(text)
        if match is None:
            return None
    rest = text[match.end() :].strip(" ,.")
    if not rest:
        return None
    return f"A {match.group(1).lower()} with face, {rest}"


class CaptionStore:
    def __init__(self, tree: ResultsTree):
        self.path = tree.folder("captions") / CAPTIONS_FILE

    def records(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        records = {}
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records[record["image"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                raise BadInputError(f"{self.path}:{number}: not a caption record") from None
        return records

    def get(self, image: str) -> str | None:
        record = self.records().get(image)
        return record["caption"] if record else None

    def put(self, image: str, caption: str, origin: str, file: str | None = None) -> None:
        self.put_many([(image, caption, origin, file)])

    def put_many(self, entries: list[tuple[str, str, str, str | None]]) -> None:
        records = self.records()
        for image, caption, origin, file in entries:
            records[image] = {"image": image, "file": file or f"{image}.png", "caption": " ".join(caption.split()), "origin": origin}
        write_text_atomic(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records.values()))

    def export_txt(self, path: str | os.PathLike) -> int:
        """Write the original ``'{index:5d}/{name}/{text}'`` format."""
        records = list(self.records().values())
        write_text_atomic(path, "".join(f"{i:5d}/{r['file']}/{r['caption']}\n" for i, r in enumerate(records)))
        return len(records)


class Captioner(Protocol):
    def __call__(self, image: Image.Image, instruction: str) -> str: ...


def api_key_from_environment() -> str | None:
    return next((os.environ[name] for name in API_KEY_VARIABLES if os.environ.get(name)), None)


class GeminiCaptioner:
    """Gemini through google-genai. The key comes from the environment and stays in memory."""

    def __init__(self, model: str = DEFAULT_MODEL):
        key = api_key_from_environment()
        if key is None:
            raise BadInputError(
                f"no API key: set {' or '.join(API_KEY_VARIABLES)}, or import a captions file with --import"
            )
        from google import genai

        self._client = genai.Client(api_key=key)
        self.model = model

    def __call__(self, image: Image.Image, instruction: str) -> str:
        response = self._client.models.generate_content(model=self.model, contents=[instruction, image])
        return response.text or ""


class LocalVLMCaptioner:
    """Any transformers image-text-to-text model in a local folder (SmolVLM, Qwen2-VL, LLaVA...),
    asked through its own chat template and decoded greedily, so that a caption is reproducible."""

    def __init__(self, folder: str | os.PathLike, device: str = "auto", dtype: str = "auto", max_new_tokens: int = 96):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        quiet_libraries()
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise BadInputError(f"{folder}: not a transformers model folder (no config.json)")
        self.device = resolve_device(device)
        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        self.vlm = AutoModelForImageTextToText.from_pretrained(
            folder, dtype=resolve_dtype(dtype, self.device), local_files_only=True
        ).to(self.device)
        self.vlm.eval()
        self.model = f"local:{folder.name}"
        self.max_new_tokens = max_new_tokens

    def __call__(self, image: Image.Image, instruction: str) -> str:
        import torch

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=[image], text=prompt, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.vlm.dtype)
        with torch.inference_mode():
            output = self.vlm.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answer = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(answer, skip_special_tokens=True)[0].strip()


def automatic_captioner(models_dir: str | os.PathLike, device: str = "auto") -> Captioner:
    """Gemini when a key is in the environment, else the registry's local VLM when present."""
    if api_key_from_environment() is not None:
        return GeminiCaptioner()
    if not registry.missing_files("caption-vlm", models_dir):
        return LocalVLMCaptioner(registry.require("caption-vlm", models_dir), device)
    raise MissingModelError(
        f"no captioner: set {' or '.join(API_KEY_VARIABLES)} for Gemini, put a local VLM in "
        f"{Path(models_dir) / registry.spec('caption-vlm').folder}, or give the caption yourself"
    )


RETRYABLE_CODES = {429, 500, 502, 503, 504}


def _retryable(error: Exception) -> bool:
    return getattr(error, "code", None) in RETRYABLE_CODES or isinstance(error, (ConnectionError, TimeoutError))


def _redact(text: str) -> str:
    key = api_key_from_environment()
    return text.replace(key, "<api key>") if key else text


def caption_with_retries(
    captioner: Captioner,
    image: Image.Image,
    attempts: int = 5,
    first_delay: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Ask the model, waiting 2, 4, 8... seconds after a rate limit or a transient server error."""
    for attempt in range(attempts):
        try:
            return captioner(image, INSTRUCTION)
        except Exception as error:  # the client's error types vary; only some are worth a retry
            if not _retryable(error) or attempt == attempts - 1:
                raise
            sleep(first_delay * 2**attempt)
    raise AssertionError("unreachable")


class CaptionStage(Stage[Path]):
    """Caption every image not yet in the store (step 2); one failure does not stop the rest.

    The store is one file, so the main process alone runs this stage. ``captioner`` defaults to
    the session's (Gemini with a key in the environment, else the local VLM). ``shown_as`` names
    an image in messages by the file the user gave rather than its copy in the tree.
    """

    name = "caption"
    shardable = False

    def __init__(
        self,
        tree: ResultsTree,
        captioner: Captioner | None = None,
        overwrite: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        shown_as: dict[str, str] | None = None,
    ):
        self.store = CaptionStore(tree)
        self.captioner = captioner
        self.overwrite = overwrite
        self.sleep = sleep
        self.shown_as = shown_as or {}
        self._captioned = set(self.store.records())

    def outputs(self, case: Path) -> list[Path]:
        return [self.store.path]

    def done(self, case: Path) -> bool:
        # The store is one file for every image: a case is done when its record is in it.
        return stem(case) in self._captioned

    def run(self, case: Path, session, log) -> Done:
        name = stem(case)
        shown = self.shown_as.get(name, case.name)
        captioner = self.captioner or session.captioner
        try:
            raw = caption_with_retries(captioner, load_image(case), sleep=self.sleep)
        except OnePoseTransError:
            raise
        except Exception as error:  # an API error for this image; the others go on
            raise CaseError(_redact(f"{shown}: {type(error).__name__}: {error}".splitlines()[0])) from None
        caption = conform(raw)
        if caption is None:
            raise BadInputError(
                f"{shown}: the caption from {getattr(captioner, 'model', 'the model')} does not fit "
                f"'A man/woman with face, ...' ({raw[:120]!r}); give the caption yourself"
            )
        self.store.put(name, caption, origin=getattr(captioner, "model", "model"), file=Path(shown).name)
        log.ok(name, caption=caption)
        return Done(f"{shown}: {caption}")


def import_captions(
    path: str | os.PathLike, tree: ResultsTree, echo: Callable[[str], None] = print, profile: Profile = DEFAULT
) -> dict[str, int]:
    """Bring a user's captions file (original ``index/name/text`` format) into the store, checked."""
    path = Path(path)
    entries = {Path(name).stem: (text, name) for name, text in read_caption_lines(path, profile)}
    log = tree.log("caption")
    accepted = []
    for name, (text, file) in entries.items():
        caption = conform(text)
        if caption is None:
            log.fail(name, f"{path}: caption of {name} does not fit 'A man/woman with face, ...': {text[:120]!r}")
        else:
            accepted.append((name, caption, f"import:{path.name}", file))
    CaptionStore(tree).put_many(accepted)
    echo(f"imported {len(accepted)} captions from {path}; {len(log.failed)} flagged (see {log.path})")
    return {"imported": len(accepted), "flagged": len(log.failed)}
