"""IMAGPose's evaluation protocol end to end on the tiny kit: every scenario generated from the
DeepFashion layout, scored at both sizes by the project's metric code, gathered in one table."""

import json

import pytest

from oneposetrans.cli import main
from oneposetrans.imagpose.evaluate import plan
from oneposetrans.testing.mini_dataset import TEST_OUTFITS, prepared_mini_deepfashion

FIVE, FOUR = TEST_OUTFITS


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_mini_deepfashion(tmp_path_factory.mktemp("deepfashion"))


def test_the_scenarios_fill_the_canvas_as_the_paper_describes():
    pairs = [("a_1front.jpg", "a_2side.jpg"), ("a_1front.jpg", "a_3back.jpg"), ("a_1front.jpg", "a_4full.jpg"), ("a_1front.jpg", "a_7additional.jpg")]
    photos = ["a_1front.jpg", "a_2side.jpg", "a_3back.jpg", "a_4full.jpg", "a_7additional.jpg", "b_1front.jpg"]
    assert [len(p.targets) for p in plan("multi-target", pairs, photos)] == [3, 1]
    t3 = plan("t3", pairs, photos)
    assert t3[0].sources == ("a_1front.jpg", "a_3back.jpg", "a_4full.jpg")  # other views of the outfit, never the target
    assert all(p.targets[0] not in p.sources for p in t3)
    assert [p.sources for p in plan("t1", pairs[:1], photos)] == [("a_1front.jpg",)]


def test_the_protocol_runs_every_scenario_and_scores_both_sizes(data, tmp_path, tiny_models, capsys):
    results = tmp_path / "results"
    command = ["imagpose", "evaluate", "--smoke", "--quiet", "--device", "cpu", "--steps", "1", "--data", str(data), "--results", str(results)]
    assert main(command) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "| t1 (paper, DINOv2-B, Table 3) | 256x176 | 8570 | 0.7541 | - | 0.1343 | 5.9286 |" in out
    assert "| t1 (paper, DINOv2-G, Table 1) | 256x176 | 8570 | 0.7561 | - | 0.1284 | 5.8738 |" in out
    assert "these numbers mean nothing" in out and "these numbers mean nothing" in (results / "evaluation" / "imagpose.md").read_text()
    table = json.loads((results / "evaluation" / "imagpose.json").read_text())["ours"]
    assert set(table) == {"t1", "t2", "t3", "multi-target"}
    for scenario, sizes in table.items():
        assert set(sizes) == {"256x176", "512x352"}
        for size, summary in sizes.items():
            assert summary["pairs"] == 3 and {"ssim_pcdms", "lpips", "lpips_pcdms", "fid"} <= set(summary)
            assert (results / scenario / f"evaluation-{size}" / "report.html").is_file()
        names = sorted(p.name for p in (results / scenario / "reposed_result").iterdir())
        assert names == sorted(f"{a}_to_{b}.png" for a, b in [(f"{FIVE}_1front", f"{FIVE}_2side"), (f"{FIVE}_1front", f"{FIVE}_3back"), (f"{FOUR}_1front", f"{FOUR}_4full")])
    logs = [json.loads(line) for line in (results / "multi-target" / "logs" / "imagpose.jsonl").read_text().splitlines()]
    assert sorted(r["targets"] for r in logs if r["status"] == "done") == [1, 2]  # FIVE's two targets in one pass
    t3 = [json.loads(line) for line in (results / "t3" / "logs" / "imagpose.jsonl").read_text().splitlines()]
    assert sorted(r["sources"] for r in t3 if r["status"] == "done") == [3, 3, 3]

    # A second run finds everything done, and a pair that cannot run is one line while the rest go on.
    with open(data / "fasion-resize-pairs-test.csv", "a") as pairs:
        pairs.write(f"missing_1front.jpg,{FOUR}_2side.jpg\n")
    try:
        assert main([*command, "--scenarios", "t1", "--sizes", "256x176"]) == 1
    finally:
        lines = (data / "fasion-resize-pairs-test.csv").read_text().splitlines()
        (data / "fasion-resize-pairs-test.csv").write_text("\n".join(lines[:-1]) + "\n")
    assert "missing_1front.jpg: no such test photo" in capsys.readouterr().err
    t1 = [json.loads(line) for line in (results / "t1" / "logs" / "imagpose.jsonl").read_text().splitlines()]
    assert [r["status"] for r in t1].count("skipped") == 3


def test_smoke_evaluation_needs_no_data_folder(tmp_path, tiny_models, capsys):
    """--smoke brings the synthetic mini split's test pairs (built once in the cache)."""
    results = tmp_path / "results"
    command = ["imagpose", "evaluate", "--smoke", "--quiet", "--device", "cpu", "--steps", "1", "--scenarios", "t1", "--sizes", "256x176",
               "--metrics", "ssim_pcdms", "--results", str(results)]
    assert main(command) == 0, capsys.readouterr().err
    assert json.loads((results / "evaluation" / "imagpose.json").read_text())["ours"]["t1"]["256x176"]["pairs"] == 3
    assert main(["imagpose", "evaluate", "--results", str(tmp_path / "none")]) == 1
    assert "needs --data DIR" in capsys.readouterr().err and not (tmp_path / "none").exists()
