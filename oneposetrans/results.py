"""The results tree: folder names, file naming, atomic writes, resume checks and stage logs.

Every stage reads and writes through this module, so a case is "done" exactly when its final
file exists, and a final file only ever appears complete (written to a temporary name in the
same folder, then renamed over the final one).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from oneposetrans.errors import BadInputError, EnvironmentProblem
from oneposetrans.profiles import DEFAULT, Profile

# Folders of the original README, in recipe order, plus the ones this toolkit adds.
FOLDERS: tuple[str, ...] = (
    "images",
    "images_rgba",
    "images_mask",
    "images_inpainted",
    "lora",
    "reposed_result",
    "reposed_rgba",
    "reposed_mask",
    "reposed_rgb",
    "reposed_final_result",
    "refined_result",
    "refined_rgb",
    "refined_mask",
    "refined_final_result",
    "poses",
    "captions",
    "logs",
)

PAIR_SEPARATOR = "_to_"
_PARTIAL_SUFFIX = ".partial"
_HOST = socket.gethostname()


def safe_component(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a single, harmless path component; reject anything else.

    Names come from data files (pairs lists, captions), so a name must never climb out of
    the results tree or address an absolute path.
    """
    if not name or name == "." or "\x00" in name:
        raise BadInputError(f"invalid {what} {name!r}: empty or reserved")
    if "/" in name or "\\" in name:
        raise BadInputError(f"invalid {what} {name!r}: contains a path separator")
    if ".." in name:
        raise BadInputError(f"invalid {what} {name!r}: contains '..'")
    return name


def stem(name: str | os.PathLike) -> str:
    """Image name without folder and extension: the key every stage files a case under."""
    return safe_component(Path(name).stem, "image name")


def pair_name(source: str | os.PathLike, target: str | os.PathLike, suffix: str = ".png") -> str:
    """The one naming scheme for generated files: ``<source>_to_<target>.png``."""
    return f"{stem(source)}{PAIR_SEPARATOR}{stem(target)}{suffix}"


def pose_map_name(target: str | os.PathLike, profile: Profile = DEFAULT) -> str:
    """The cached ControlNet map of a target under ``poses/``; the profiles draw different maps
    (``reference`` stretches them to 1024x1024), so the name carries any profile but the default."""
    return f"{stem(target)}.png" if profile.name == DEFAULT.name else f"{stem(target)}.{profile.name}.png"


def split_pair_name(name: str) -> tuple[str, str]:
    """Inverse of :func:`pair_name` (stems only); refuses names that are ambiguous."""
    base = Path(name).stem
    if base.count(PAIR_SEPARATOR) != 1:
        raise BadInputError(f"{name}: expected exactly one {PAIR_SEPARATOR!r} in a result name")
    source, target = base.split(PAIR_SEPARATOR)
    return source, target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it over ``final`` if the block succeeds.

    The temporary name carries host and pid so that a later run can tell the leftovers of a
    killed process from the work in progress of a live one (several processes may share a
    results tree under ``accelerate launch``).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{_HOST}.{os.getpid()}{_PARTIAL_SUFFIX}")
    try:
        yield tmp
        # Some writers create private (0600) files; results get the umask's usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: object) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def is_done(path: str | os.PathLike) -> bool:
    """A case is done when its final file exists and is not empty."""
    path = Path(path)
    return path.is_file() and path.stat().st_size > 0


def check_writable_folder(root: str | os.PathLike) -> None:
    """Fail in one line, before any work, when ``root`` cannot become a writable folder."""
    path = Path(root).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise EnvironmentProblem(f"{path}: exists and is not a folder; choose another --out")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise EnvironmentProblem(f"{path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise EnvironmentProblem(f"{path}: no permission to write in {ancestor}")


class ResultsTree:
    """One results directory: the stage folders and the files in them."""

    def __init__(self, root: str | os.PathLike, create: bool = True):
        """``create`` False names the tree's paths without touching the disk (a run planning its
        stages before its checks have passed)."""
        self.root = Path(root).expanduser().resolve()
        self.create = create
        if create:
            for name in FOLDERS:
                (self.root / name).mkdir(parents=True, exist_ok=True)
            self.sweep_partials()

    def folder(self, name: str) -> Path:
        if name not in FOLDERS:
            raise ValueError(f"unknown results folder {name!r}; known: {', '.join(FOLDERS)}")
        path = self.root / name
        if self.create:
            path.mkdir(exist_ok=True)
        return path

    def file(self, folder: str, name: str) -> Path:
        """Path of ``name`` inside ``folder``; ``name`` comes from data, so it is checked."""
        return self.folder(folder) / safe_component(name, "file name")

    def sweep_partials(self) -> list[Path]:
        """Delete temporary files left by killed runs on this host (never a live process's)."""
        removed = []
        for tmp in self.root.rglob(f"*{_PARTIAL_SUFFIX}"):
            parts = tmp.name[: -len(_PARTIAL_SUFFIX)].rsplit(".", 2)
            if len(parts) != 3:
                continue
            _, host, pid = parts
            if host == _HOST and pid.isdigit() and not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        return removed

    def log(self, stage: str) -> "StageLog":
        return StageLog(self.folder("logs") / f"{safe_component(stage, 'stage')}.jsonl", stage)


@dataclass
class StageLog:
    """Append-only JSON-lines record of a stage's cases: what was done, skipped or failed, and why."""

    path: Path
    stage: str
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def _append(self, record: dict) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": self.stage, **record}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        # One write() per line in append mode: lines from several processes never interleave.
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)

    def ok(self, case: str, **fields: object) -> None:
        self.done += 1
        self._append({"case": case, "status": "done", **fields})

    def skip(self, case: str, reason: str = "already done") -> None:
        self.skipped += 1
        self._append({"case": case, "status": "skipped", "reason": reason})

    def fail(self, case: str, reason: str) -> None:
        self.failed.append((case, reason))
        self._append({"case": case, "status": "failed", "reason": reason})

    def summary(self) -> str:
        text = f"{self.stage}: {self.done} done, {self.skipped} skipped, {len(self.failed)} failed"
        if self.failed:
            text += f" (reasons in {self.path})"
        return text
