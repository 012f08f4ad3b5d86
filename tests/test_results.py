import json
import os
import subprocess
import sys

import pytest

from oneposetrans.errors import BadInputError
from oneposetrans.results import (
    FOLDERS,
    ResultsTree,
    atomic_path,
    is_done,
    pair_name,
    safe_component,
    split_pair_name,
)


@pytest.mark.parametrize("name", ["", ".", "..", "../x.png", "a/b.png", "a\\b.png", "x..png", "a\x00b"])
def test_hostile_names_are_rejected(name):
    with pytest.raises(BadInputError):
        safe_component(name)


def test_pair_naming_round_trip():
    name = pair_name("dir/person_1_pexels2.jpg", "pose_a.png")
    assert name == "person_1_pexels2_to_pose_a.png"
    assert split_pair_name(name) == ("person_1_pexels2", "pose_a")
    with pytest.raises(BadInputError):
        split_pair_name("a_to_b_to_c.png")


def test_tree_has_every_original_folder_and_refuses_escape(tmp_path):
    tree = ResultsTree(tmp_path / "results")
    for folder in FOLDERS:
        assert tree.folder(folder).is_dir()
    assert {"images", "reposed_result", "refined_final_result", "poses", "captions", "logs"} <= set(FOLDERS)
    with pytest.raises(BadInputError):
        tree.file("images", "../../etc/passwd")
    with pytest.raises(ValueError):
        tree.folder("not_a_stage")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out.png"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"whole")
    assert final.read_bytes() == b"whole" and is_done(final)


def test_sweep_removes_only_dead_process_leftovers(tmp_path):
    tree = ResultsTree(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    host = socket.gethostname()
    stale = tree.folder("images") / f".a.png.{host}.{dead.stdout.strip()}.partial"
    live = tree.folder("images") / f".b.png.{host}.{os.getpid()}.partial"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    ResultsTree(tmp_path)
    assert not stale.exists() and live.exists()


def test_stage_log_records_reasons(tmp_path):
    log = ResultsTree(tmp_path).log("segment")
    log.ok("a.png", seconds=1.0)
    log.skip("b.png")
    log.fail("c.png", "c.png: not an image file")
    records = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert [r["status"] for r in records] == ["done", "skipped", "failed"]
    assert records[2]["reason"] == "c.png: not an image file"
    assert "1 done, 1 skipped, 1 failed" in log.summary()
