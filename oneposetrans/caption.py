"""Captions: the text prompt of the Visual Consistency Module.

The method expects "A man/woman with face, <garments and accessories>": the word "face" is
where the face embedding is injected. Captions live in ``captions/captions.jsonl``, one JSON
object per image, keyed by the image's stem like every other file of the results tree
(``{"image": stem, "caption": text, "origin": ...}``). Automatic captioning
with a vision-language model is not built yet (issue 8); captions are given by the user.
"""

from __future__ import annotations

import json

from oneposetrans.results import ResultsTree, write_text_atomic

CAPTIONS_FILE = "captions.jsonl"


class CaptionStore:
    def __init__(self, tree: ResultsTree):
        self.path = tree.folder("captions") / CAPTIONS_FILE

    def _read(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        records = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["image"]] = record
        return records

    def get(self, image: str) -> str | None:
        record = self._read().get(image)
        return record["caption"] if record else None

    def put(self, image: str, caption: str, origin: str) -> None:
        records = self._read()
        records[image] = {"image": image, "caption": " ".join(caption.split()), "origin": origin}
        write_text_atomic(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records.values()))
