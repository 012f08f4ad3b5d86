import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from oneposetrans.datasets import (
    deepfashion_flat_name,
    prepare_deepfashion,
    read_captions,
    read_keypoints_csv,
    read_pairs,
    unique_sources,
)
from oneposetrans.errors import BadInputError
from tests.conftest import REPO

TREE = {
    "MEN/Jackets_Vests/id_00006530/04_1_front.jpg": "fashionMENJackets_Vestsid0000653004_1front.jpg",
    "WOMEN/Blouses_Shirts/id_00003372/03_3_back.jpg": "fashionWOMENBlouses_Shirtsid0000337203_3back.jpg",
    "WOMEN/Dresses/id_00000002/02_7_additional.jpg": "fashionWOMENDressesid0000000202_7additional.jpg",
}


def test_flattened_names_match_the_published_rule():
    for relative, expected in TREE.items():
        assert deepfashion_flat_name(f"fashion/{relative}") == expected


@pytest.fixture
def fashion(tmp_path):
    for relative in TREE:
        path = tmp_path / "fashion" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (176, 256), "white").save(path)
    names = list(TREE.values())
    (tmp_path / "fashion" / "train.lst").write_text(names[0] + "\n")
    (tmp_path / "fashion" / "test.lst").write_text("\n".join([names[1], names[2], "fashionMENmissingid1_1front.jpg"]) + "\n")
    return tmp_path


def test_split_copies_renames_reports_missing_and_resumes(fashion, tmp_path):
    lines = []
    counts = prepare_deepfashion(fashion, tmp_path / "results", echo=lines.append)
    assert sorted(p.name for p in (fashion / "fashion" / "train_highres").iterdir()) == [list(TREE.values())[0]]
    assert sorted(p.name for p in (fashion / "fashion" / "test_highres").iterdir()) == sorted(list(TREE.values())[1:])
    pngs = sorted(p.name for p in (tmp_path / "results" / "images").iterdir())
    assert pngs == sorted(name.replace(".jpg", ".png") for name in list(TREE.values())[1:])
    assert counts["missing"] == 1 and "fashionMENmissingid1_1front.jpg" in lines[-1]
    again = prepare_deepfashion(fashion, tmp_path / "results", echo=lambda _: None)
    assert again["copied"] == 0 and again["already_present"] == 3 and again["pngs_written"] == 0


def test_root_script_runs_as_the_original_step(fashion):
    ran = subprocess.run([sys.executable, str(REPO / "generate_fashion_datasets.py")], cwd=fashion, capture_output=True, text=True)
    assert ran.returncode == 1 and "1 listed images not found" in ran.stdout  # the missing one
    assert len(list((fashion / "fashion" / "test_highres").iterdir())) == 2


def test_pair_list_formats(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("from,to\na.jpg,b.jpg\nc.jpg,a.jpg\na.jpg,c.jpg\n")
    subset = tmp_path / "subset.txt"
    subset.write_text("0/a.jpg/b.jpg\n7/c.jpg/a.jpg\n")
    wpose = tmp_path / "wpose.txt"
    wpose.write_text("person_1_pexels2.png person_3_pexels4.png\n")
    assert read_pairs(csv) == [("a.jpg", "b.jpg"), ("c.jpg", "a.jpg"), ("a.jpg", "c.jpg")]
    assert unique_sources(read_pairs(csv)) == ["a.jpg", "c.jpg"]
    assert read_pairs(subset) == [("a.jpg", "b.jpg"), ("c.jpg", "a.jpg")]
    assert read_pairs(wpose) == [("person_1_pexels2.png", "person_3_pexels4.png")]


@pytest.mark.parametrize(
    "content,line,reason",
    [
        ("from,to\na.jpg,b.jpg\nbroken\n", 3, "expected"),
        ("a.jpg,../../etc/passwd\n", 1, "path separator"),
        ("1/a.jpg/..\n", 1, "'..'"),
        ("a.jpg b.jpg c.jpg\n", 1, "expected"),
    ],
)
def test_malformed_and_hostile_lists_name_file_and_line(tmp_path, content, line, reason):
    path = tmp_path / "pairs.txt"
    path.write_text(content)
    with pytest.raises(BadInputError) as error:
        read_pairs(path)
    assert f"{path}:{line}:" in str(error.value) and reason in str(error.value)


def test_captions_keep_slashes_in_the_text_and_reference_cuts_them_as_published(tmp_path):
    from oneposetrans.profiles import REFERENCE

    path = tmp_path / "captions.txt"
    path.write_text("    0/fashionA.jpg/A woman with face, white/grey blouse\n")
    assert read_captions(path) == {"fashionA": "A woman with face, white/grey blouse"}
    # The published scripts: line.rstrip().split('/')[2].
    assert read_captions(path, REFERENCE) == {"fashionA": "A woman with face, white"}


def test_keypoint_csv(tmp_path):
    ys = [10] * 17 + [-1]
    xs = [20] * 16 + [-1, 30]
    path = tmp_path / "annotation.csv"
    path.write_text(f"name:keypoints_y:keypoints_x\nfashionA.jpg: {ys}: {xs}\n")
    points = read_keypoints_csv(path)["fashionA"]
    assert points.shape == (18, 2) and tuple(points[0]) == (20.0, 10.0)
    assert np.isnan(points[16]).all() and np.isnan(points[17]).all()
    path.write_text("name:keypoints_y:keypoints_x\nfashionA.jpg:[1, 2]:[3, 4]\n")
    with pytest.raises(BadInputError, match="annotation.csv:2: expected 18"):
        read_keypoints_csv(path)
