"""bench/time_to_dice.py: Dice-against-time curves, the targets, the result lines, a whole run."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.append(str(Path(__file__).parents[1] / "bench"))  # the script imports its neighbours
dice_curves = importlib.import_module("dice_curves")
time_to_dice = importlib.import_module("time_to_dice")
Curve, Point, Target = dice_curves.Curve, dice_curves.Point, dice_curves.Target
time_to_level, dice_at = dice_curves.time_to_level, dice_curves.dice_at

SMP_INSTALLED = importlib.util.find_spec("segmentation_models_pytorch") is not None


def budgets(*points: tuple[int, float, float]) -> Curve:
    """petseg's curve: one (epochs, seconds, Dice) point per budget."""
    return Curve("petseg", "petseg", "defaults", tuple(Point(*point) for point in points), True)


def epochs(*points: tuple[float, float], run: str = "smp") -> Curve:
    """A reference run's curve: (cumulative seconds, Dice) after each epoch."""
    scored = tuple(Point(epoch, *point) for epoch, point in enumerate(points, 1))
    return Curve(run, run, "a loop", scored, False)


def write_pets(root: Path, trainval: int = 20, test: int = 3) -> Path:
    """A few 40x48 images in the official layout: a bright rectangle (pet) on dark noise."""
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    names = (
        [f"Breed_{i}" for i in range(1, trainval + 1)],
        [f"Other_{i}" for i in range(1, test + 1)],
    )
    for index, name in enumerate(names[0] + names[1]):
        trimap = np.full((40, 48), 2, dtype=np.uint8)
        trimap[10:30, 12:36] = 1
        pixels = np.random.default_rng(index).integers(0, 60, (40, 48, 3), dtype=np.uint8)
        pixels[trimap == 1] += 150
        Image.fromarray(pixels).save(root / "images" / f"{name}.jpg", quality=95)
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")
    for split, listed in zip(("trainval", "test"), names, strict=True):
        (root / "annotations" / f"{split}.txt").write_text("".join(f"{n} 1 1 1\n" for n in listed))
    return root


# --- curves -----------------------------------------------------------------------------------


def test_an_epoch_curve_reaches_a_level_at_the_first_epoch_at_or_above_it() -> None:
    curve = epochs((10, 0.60), (20, 0.72), (30, 0.80), (40, 0.78))
    assert time_to_level(curve, 0.70) == 20  # no interpolation: training stops at epoch ends
    assert time_to_level(curve, 0.72) == 20
    assert time_to_level(curve, 0.80) == 30
    assert time_to_level(curve, 0.50) == 10
    assert time_to_level(curve, 0.81) is None


def test_a_budget_curve_crosses_a_level_on_the_line_between_budgets() -> None:
    curve = budgets((5, 100, 0.70), (10, 200, 0.80), (20, 400, 0.86))
    assert time_to_level(curve, 0.75) == pytest.approx(150)
    assert time_to_level(curve, 0.83) == pytest.approx(300)
    assert time_to_level(curve, 0.80) == pytest.approx(200)
    assert time_to_level(curve, 0.60) == 100  # the smallest budget: nothing shorter was run
    assert time_to_level(curve, 0.90) is None


def test_a_budget_curve_that_dips_is_crossed_where_it_first_reaches_the_level() -> None:
    curve = budgets((5, 100, 0.80), (10, 200, 0.78), (20, 300, 0.84))
    assert time_to_level(curve, 0.79) == 100
    assert time_to_level(curve, 0.82) == pytest.approx(200 + 100 * 0.04 / 0.06)


def test_dice_at_a_time_interpolates_budgets_and_holds_between_epochs() -> None:
    curve = budgets((5, 100, 0.70), (10, 200, 0.80))
    assert dice_at(curve, 150) == pytest.approx(0.75)
    assert dice_at(curve, 100) == pytest.approx(0.70)
    assert dice_at(curve, 50) is None  # before the smallest budget: not measured
    assert dice_at(curve, 1000) == pytest.approx(0.80)  # after the largest: it holds
    steps = epochs((10, 0.60), (20, 0.72))
    assert dice_at(steps, 15) == pytest.approx(0.60)
    assert dice_at(steps, 25) == pytest.approx(0.72)
    assert dice_at(steps, 5) is None


# --- comparisons and targets ------------------------------------------------------------------


def test_the_targets_pass_when_petseg_gets_there_sooner_and_ends_higher() -> None:
    smp = epochs((250, 0.80), (500, 0.835))
    petseg = budgets((10, 100, 0.80), (20, 200, 0.85), (40, 400, 0.87))
    comparison = dice_curves.compare(petseg, smp)
    assert comparison.seconds_to_reference_dice == pytest.approx(170)
    assert comparison.time_share == pytest.approx(0.34)
    assert comparison.dice_at_reference_seconds == pytest.approx(0.87)
    assert comparison.dice_margin == pytest.approx(0.035)
    checked = dice_curves.targets(petseg, comparison)
    assert [target.passed for target in checked] == [True, True, True]


def test_the_targets_fail_when_petseg_is_slower_worse_or_below_the_guard() -> None:
    smp = epochs((250, 0.80), (500, 0.835))
    petseg = budgets((20, 300, 0.80), (40, 600, 0.84))
    comparison = dice_curves.compare(petseg, smp)
    assert comparison.time_share == pytest.approx((300 + 300 * 0.035 / 0.04) / 500)
    assert comparison.dice_margin == pytest.approx(0.80 + 0.04 * 200 / 300 - 0.835)
    checked = dice_curves.targets(petseg, comparison)
    assert [target.passed for target in checked] == [False, False, False]


def test_a_target_without_the_points_it_needs_is_not_measured_rather_than_passed() -> None:
    smp = epochs((250, 0.80), (500, 0.835))
    petseg = budgets((5, 600, 0.80))  # no 40-epoch budget; smaller budgets not run
    checked = dice_curves.targets(petseg, dice_curves.compare(petseg, smp))
    assert [(target.value, target.passed) for target in checked] == [(None, None)] * 3
    assert "not measured" in time_to_dice.format_target(checked[0])


def test_a_target_at_its_limit_passes() -> None:
    assert Target("share", 0.40, 0.40, at_most=True).passed is True
    assert Target("share", 0.41, 0.40, at_most=True).passed is False
    assert Target("margin", 0.02, 0.02, at_most=False).passed is True
    assert Target("margin", 0.019, 0.02, at_most=False).passed is False


def test_targets_are_checked_for_the_resnet34_unet_against_smp_only(tmp_path: Path) -> None:
    curves = [budgets((40, 400, 0.87)), epochs((500, 0.835)), epochs((500, 0.8), run="lab")]
    args = time_to_dice.parse_args([str(tmp_path)])
    comparisons, checked = time_to_dice.judge(args, curves)
    assert [comparison.reference for comparison in comparisons] == ["smp", "lab"]
    assert len(checked) == 3
    unet = time_to_dice.parse_args([str(tmp_path), "--model_type", "unet"])
    comparisons, checked = time_to_dice.judge(unet, [curves[0], curves[2]])
    assert [comparison.reference for comparison in comparisons] == ["lab"]
    assert checked == []
    assert "none checked" in time_to_dice.report(unet, [curves[0], curves[2]], comparisons, [])


# --- result lines -----------------------------------------------------------------------------


def test_result_lines_hold_the_curves_comparisons_and_targets(tmp_path: Path) -> None:
    out = tmp_path / "results" / "r.jsonl"
    args = time_to_dice.parse_args([str(tmp_path), "--out", str(out)])
    petseg = budgets((10, 100, 0.80), (40, 200, 0.87))
    smp = epochs((250, 0.80), (500, 0.835))
    comparisons, checked = time_to_dice.judge(args, [petseg, smp])
    machine = {"cpu": "a CPU", "cpu_native_bf16": True, "threads": 2}
    run = time_to_dice.run_line(args, petseg, machine, "then")
    summary = time_to_dice.summary_line(args, [petseg, smp], comparisons, checked, machine, "then")
    time_to_dice.append_lines(out, [run])
    time_to_dice.append_lines(out, [summary])  # appends: earlier lines stay
    run, summary = [json.loads(line) for line in out.read_text().splitlines()]

    assert tuple(run) == time_to_dice.RUN_KEYS
    assert (run["run"], run["curve"], run["image_size"]) == ("petseg", "budgets", 128)
    assert run["points"][1] == {"epochs": 40, "seconds": 200, "dice": 0.87}
    assert run["seconds_to"]["0.85"] == pytest.approx(100 + 100 * 0.05 / 0.07)
    assert run["seconds_to"]["0.7"] == 100 and run["final_dice"] == 0.87
    assert tuple(summary) == time_to_dice.SUMMARY_KEYS
    assert summary["runs"] == ["petseg", "smp"] and summary["environment"] == machine
    assert summary["comparisons"][0]["reference"] == "smp"
    assert [target["passed"] for target in summary["targets"]] == [True, True, True]
    assert run["started"] == summary["started"]  # one invocation's lines belong together


def test_replot_draws_the_last_invocation_of_a_results_file(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    args = time_to_dice.parse_args([str(tmp_path), "--out", str(out), "--image_size", "64"])
    machine = {"cpu": "a CPU"}
    old = [budgets((10, 100, 0.5))]
    new = [budgets((10, 100, 0.80), (40, 200, 0.87)), epochs((250, 0.80), (500, 0.835))]
    for started, curves in (("first", old), ("second", new)):
        comparisons, checked = time_to_dice.judge(args, curves)
        lines = [time_to_dice.run_line(args, curve, machine, started) for curve in curves]
        summary = time_to_dice.summary_line(args, curves, comparisons, checked, machine, started)
        time_to_dice.append_lines(out, [*lines, summary])

    curves, started, _ = time_to_dice.curves_from_lines(out)
    assert started == "second" and curves == new  # the earlier invocation's run is left out
    plot = tmp_path / "picture.png"
    assert time_to_dice.main(["--replot", str(out), "--plot", str(plot)]) == 0
    assert Image.open(plot).size[0] > 400
    assert time_to_dice.main(["--replot", str(out)]) == 0  # beside the file, named by its runs
    assert (tmp_path / "time-to-dice-resnet34_unet-64px.png").is_file()
    (tmp_path / "other.jsonl").write_text(json.dumps({"bench": "something else"}) + "\n")
    with pytest.raises(SystemExit, match="no time_to_dice summary line"):
        time_to_dice.main(["--replot", str(tmp_path / "other.jsonl")])


def test_the_dice_axis_starts_below_the_lowest_final_dice_on_a_005_step() -> None:
    assert time_to_dice.axis_bottom([budgets((40, 400, 0.85)), epochs((500, 0.806))]) == 0.65
    assert time_to_dice.axis_bottom([epochs((500, 0.10))]) == 0.0
    assert time_to_dice.axis_bottom([epochs((500, 0.80))]) == pytest.approx(0.65)


def test_without_data_or_replot_the_usage_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        time_to_dice.parse_args([])
    assert refused.value.code == 2


# --- the command ------------------------------------------------------------------------------


def test_without_smp_the_benchmark_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = write_pets(tmp_path / "pets")
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # import fails
    out = tmp_path / "r.jsonl"
    with pytest.raises(SystemExit) as refused:
        time_to_dice.main([str(data), "--runs", "petseg,smp", "--out", str(out)])
    assert "pip install -e '.[bench]'" in str(refused.value.code)
    assert not out.exists()


def test_a_folder_without_the_dataset_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        time_to_dice.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "r.jsonl")])
    assert "not an Oxford-IIIT Pet folder" in str(refused.value.code)


def test_a_work_dir_with_files_is_refused_so_no_old_checkpoint_resumes(tmp_path: Path) -> None:
    data = write_pets(tmp_path / "pets")
    work = tmp_path / "work"
    work.mkdir()
    (work / "petseg-5ep.pt").write_bytes(b"an earlier run")
    with pytest.raises(SystemExit) as refused:
        time_to_dice.main([str(data), "--runs", "petseg", "--work_dir", str(work)])
    assert "not empty" in str(refused.value.code)


def test_options_unknown_runs_and_flags_for_petseg(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        time_to_dice.parse_args([str(tmp_path), "--runs", "petseg,fast"])
    assert refused.value.code == 2
    args = time_to_dice.parse_args([str(tmp_path), "--budgets", "10,5,10", "--", "--loss", "bce"])
    assert args.budgets == [5, 10] and args.train_flags == ["--loss", "bce"]
    assert args.runs == ["petseg", "smp", "lab"]
    assert time_to_dice.parse_args([str(tmp_path), "--model_type", "unet"]).runs == [
        "petseg",
        "lab",
    ]
    assert time_to_dice.flag_value(["--precision", "fp32"], "--precision", "auto") == "fp32"


@pytest.mark.slow
def test_the_whole_benchmark_on_a_tiny_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture, single_thread: None
) -> None:
    data = write_pets(tmp_path / "pets")
    runs = ["petseg", "smp", "lab"] if SMP_INSTALLED else ["petseg", "lab"]
    out = tmp_path / "results" / "r.jsonl"
    argv = [str(data), "--image_size", "32", "--budgets", "2,1", "--reference_epochs", "1",
            "--runs", ",".join(runs), "--out", str(out)]  # fmt: skip
    assert time_to_dice.main(argv) == 0

    *run_lines, summary = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["run"] for line in run_lines] == runs and summary["summary"] is True
    petseg, *references = run_lines
    assert sorted(point["epochs"] for point in petseg["points"]) == [1, 2]
    for line in run_lines:
        assert all(point["seconds"] > 0 and 0 <= point["dice"] <= 1 for point in line["points"])
    assert all([point["epochs"] for point in line["points"]] == [1] for line in references)
    assert {"cpu", "cpu_native_bf16", "threads", "torch", "code"} <= set(summary["environment"])
    assert [comparison["reference"] for comparison in summary["comparisons"]] == runs[1:]
    assert len(summary["targets"]) == (3 if SMP_INSTALLED else 0)
    plot = out.with_name("time-to-dice-resnet34_unet-32px.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "seconds of training to reach test Dice" in printed
    assert "petseg budgets" in printed and "petseg against lab" in printed
