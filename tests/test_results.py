"""`python -m fedmpi.plot table` (rounds to a target accuracy, --best-lr) and `--target` on the accuracy plot.

The run folders are made by hand (config.toml from fedmpi.config.RunConfig fields, metrics.jsonl with
chosen accuracies), so every number in the table is known in advance: rounds to target = the first
round whose test accuracy is >= the target; --best-lr keeps per setting and seed the lr with the fewest
rounds to target (an lr that never reaches it loses; ties go to the higher best accuracy); an unreached
target reads "not in N" with N the last round run, or "diverged in round N" where summary.json
says so. The table's Markdown rows are parsed and compared with those hand-computed values.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import tomli_w

from fedmpi.config import RunConfig
from helpers import launch
from test_bad_input import one_error_line

TIMEOUT_S = 60
DATA = "/data/mnist-iid-100"


def make_run(folder: Path, accuracies: list[float], seconds: float = 2.0, **fields) -> Path:
    """A finished-looking run folder: round t has test accuracy accuracies[t] and takes `seconds`."""
    folder.mkdir(parents=True)
    cfg = asdict(RunConfig(data=DATA, out=str(folder), **fields))
    (folder / "config.toml").write_text(tomli_w.dumps(cfg))
    records = [{"round": t, "test_accuracy": a, **({"seconds": seconds} if t else {})}
               for t, a in enumerate(accuracies)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def plot(*args):
    """`python -m fedmpi.plot ARGS` as a real process (error output, exit status, the PNG)."""
    return launch(0, [str(a) for a in args], module="fedmpi.plot", timeout=TIMEOUT_S)


def table(capsys, *args) -> list[dict]:
    """The rows of `python -m fedmpi.plot table ARGS` as dicts by column header (in this process:
    each process would pay a matplotlib import)."""
    from fedmpi.plot import main
    capsys.readouterr()
    code = main(["table", *map(str, args)])
    r = capsys.readouterr()
    assert code == 0, f"exit {code}\n{r.out}\n{r.err}"
    return parse(r.out)


def parse(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert re.fullmatch(r"\|(---\|)+", lines[1]), lines[1]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


# Setting E=1: lr 0.05 reaches 0.9 at round 4, lr 0.1 at round 2, lr 0.2 never (best 0.89).
E1 = {0.05: [0.1, 0.5, 0.7, 0.85, 0.91, 0.95], 0.1: [0.1, 0.8, 0.9, 0.93, 0.94, 0.96],
      0.2: [0.1, 0.85, 0.89, 0.88, 0.89, 0.89]}
# Setting E=5: lr 0.05 and 0.1 both reach 0.9 at round 1; 0.05 ends more accurate (0.99 > 0.97).
E5 = {0.05: [0.1, 0.92, 0.95, 0.99], 0.1: [0.1, 0.95, 0.96, 0.97]}
# Setting E=20: no lr reaches 0.9; 0.1 is the most accurate (0.8).
E20 = {0.05: [0.1, 0.6, 0.7], 0.1: [0.1, 0.7, 0.8]}


@pytest.fixture
def sweep_folder(tmp_path):
    for epochs, grid in ((1, E1), (5, E5), (20, E20)):
        for lr, acc in grid.items():
            make_run(tmp_path / "sw" / f"E{epochs}_lr{lr:g}", acc, epochs=epochs, lr=lr, target_accuracy=0.9)
    return tmp_path / "sw"


def test_rounds_to_target_per_run(capsys, sweep_folder):
    rows = table(capsys, *sorted(sweep_folder.iterdir()))
    got = {(r["E"], r["η"]): (r["rounds to target"], r["best acc."], r["rounds run"], r["target"])
           for r in rows}
    assert got == {
        ("1", "0.05"): ("4", "95.00 %", "5", "90 %"),
        ("1", "0.1"): ("2", "96.00 %", "5", "90 %"),
        ("1", "0.2"): ("not in 5", "89.00 %", "5", "90 %"),
        ("5", "0.05"): ("1", "99.00 %", "3", "90 %"),
        ("5", "0.1"): ("1", "97.00 %", "3", "90 %"),
        ("20", "0.05"): ("not in 2", "70.00 %", "2", "90 %"),
        ("20", "0.1"): ("not in 2", "80.00 %", "2", "90 %"),
    }
    first = next(r for r in rows if (r["E"], r["η"]) == ("1", "0.05"))
    assert (first["data"], first["model"], first["C"], first["B"], first["seed"]) == \
        ("mnist-iid-100", "2nn", "0.1", "10", "0")
    assert first["train time"] == "10 s"  # 5 rounds of 2 s


def test_best_lr_picks_the_fewest_rounds_and_breaks_ties_by_accuracy(capsys, sweep_folder):
    rows = table(capsys, *sorted(sweep_folder.iterdir()), "--best-lr")
    got = {r["E"]: (r["η"], r["η grid"], r["rounds to target"]) for r in rows}
    assert got == {
        "1": ("0.1", "0.05, 0.1, 0.2", "2"),       # fewest rounds; 0.2 never reaches 0.9
        "5": ("0.05", "0.05, 0.1", "1"),           # tie at round 1: 0.05 is more accurate (99 > 97 %)
        "20": ("0.1", "0.05, 0.1", "not in 2"),    # none reaches it: the most accurate
    }


def test_seeds_are_kept_apart_by_best_lr(capsys, tmp_path):
    make_run(tmp_path / "a", [0.1, 0.95], lr=0.05, seed=0, target_accuracy=0.9)
    make_run(tmp_path / "b", [0.1, 0.5, 0.95], lr=0.1, seed=0, target_accuracy=0.9)
    make_run(tmp_path / "c", [0.1, 0.5, 0.95], lr=0.05, seed=1, target_accuracy=0.9)
    make_run(tmp_path / "d", [0.1, 0.95], lr=0.1, seed=1, target_accuracy=0.9)
    rows = table(capsys, tmp_path / "a", tmp_path / "b", tmp_path / "c", tmp_path / "d", "--best-lr")
    assert sorted((r["seed"], r["η"], r["rounds to target"]) for r in rows) == [("0", "0.05", "1"),
                                                                                ("1", "0.1", "1")]


def test_target_flag_overrides_the_runs_own_target(capsys, sweep_folder):
    runs = [sweep_folder / "E1_lr0.05", sweep_folder / "E1_lr0.2"]
    rows = table(capsys, *runs, "--target", "0.85")
    assert [(r["η"], r["target"], r["rounds to target"]) for r in rows] == [("0.05", "85 %", "3"),
                                                                          ("0.2", "85 %", "1")]
    rows = table(capsys, *runs, "--target", "0.96")
    assert [r["rounds to target"] for r in rows] == ["not in 5", "not in 5"]


def test_a_diverged_run_says_so(capsys, tmp_path):
    run = make_run(tmp_path / "r", [0.1, 0.5, 0.6], lr=0.3, target_accuracy=0.9)
    (run / "summary.json").write_text(json.dumps({"rounds": 2, "diverged": {"round": 3, "clients": [4, 7]}}))
    assert [r["rounds to target"] for r in table(capsys, run)] == ["diverged in round 3"]


def test_a_run_without_target_shows_its_best_accuracy(capsys, tmp_path):
    run = make_run(tmp_path / "r", [0.1, 0.8, 0.93])  # target_accuracy = 0: none
    row, = table(capsys, run)
    assert (row["target"], row["rounds to target"], row["best acc."]) == ("–", "–", "93.00 %")
    assert [row["rounds to target"] for row in table(capsys, run, "--target", "0.9")] == ["2"]


def test_folders_without_config_are_skipped_and_none_at_all_is_an_error(capsys, sweep_folder, tmp_path):
    (sweep_folder / "plan").mkdir()  # what a sweep keeps beside its runs
    (sweep_folder / "plan" / "x.toml").write_text("lr = 0.1\n")
    rows = table(capsys, sweep_folder / "plan", sweep_folder / "E5_lr0.1")
    assert [(r["E"], r["η"]) for r in rows] == [("5", "0.1")]

    (tmp_path / "empty").mkdir()
    r = plot("table", sweep_folder / "plan", tmp_path / "empty")
    assert r.returncode == 2, f"{r.stdout}\n{r.stderr}"
    assert r.stderr.splitlines() == ["fedmpi.plot: error: no run folders among the arguments"]
    assert not r.stdout


def test_table_written_to_a_file(sweep_folder, tmp_path):
    out = tmp_path / "table.md"
    r = plot("table", sweep_folder / "E1_lr0.1", "-o", out)
    assert r.returncode == 0 and f"wrote {out}" in r.stdout
    assert [row["rounds to target"] for row in parse(out.read_text())] == ["2"]


def test_accuracy_plot_with_target_writes_a_png(sweep_folder, tmp_path):
    out = tmp_path / "x.png"
    r = plot(sweep_folder / "E1_lr0.05", sweep_folder / "E1_lr0.1", "--target", "0.97", "--log-x", "-o", out)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_against_virtual_time_puts_each_round_at_its_clock(sweep_folder, tmp_path):
    """--x virtual_time: round t at its record's virtual_time (round 0 at 0); a run whose records have no
    clock is one line."""
    from fedmpi.plot import accuracy_curve
    run = make_run(tmp_path / "timed", [0.1, 0.8, 0.9])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r, clock in zip(records[1:], (4.5, 7.25)):
        r["virtual_time"] = clock
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert accuracy_curve(run, "virtual_time") == [(0.0, 10.0), (4.5, 80.0), (7.25, 90.0)]
    out = tmp_path / "t.png"
    r = plot(run, "--x", "virtual_time", "-o", out)
    assert r.returncode == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r.stderr
    r = plot(sweep_folder / "E1_lr0.1", "--x", "virtual_time", "-o", tmp_path / "u.png")
    assert r.returncode == 2 and r.stderr == (f"fedmpi.plot: error: {sweep_folder / 'E1_lr0.1'}: round 1 has no "
                                              "virtual_time (a run from before the simulated clock)\n"), r.stderr


def test_accuracy_plot_of_a_whole_sweep_folder_skips_its_plan(sweep_folder, tmp_path):
    """`python -m fedmpi.plot SWEEP/*` met the sweep's plan/ folder and failed."""
    (sweep_folder / "plan").mkdir()
    (sweep_folder / "plan" / "x.toml").write_text("lr = 0.1\n")
    out = tmp_path / "all.png"
    r = plot(*sorted(sweep_folder.iterdir()), "-o", out)
    assert r.returncode == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{r.stdout}\n{r.stderr}"


def test_a_run_without_an_evaluated_round_is_left_out_with_a_note(tmp_path, capsys):
    """A sweep's run that has just started (metrics without test accuracy) must not break the table."""
    make_run(tmp_path / "done", [0.1, 0.98], target_accuracy=0.97)
    started = make_run(tmp_path / "started", [], target_accuracy=0.97)
    (started / "metrics.jsonl").write_text(json.dumps({"round": 0}) + "\n")
    from fedmpi.plot import main
    capsys.readouterr()
    assert main(["table", str(tmp_path / "done"), str(started)]) == 0
    r = capsys.readouterr()
    assert [row["rounds to target"] for row in parse(r.out)] == ["1"]
    assert "started: no evaluated round yet; left out" in r.err


def test_optimizers_are_named_and_each_keeps_its_own_tuned_grid(capsys, tmp_path):
    """Each optimizer is a setting of its own: --best-lr picks within it, over the values it was tuned on."""
    make_run(tmp_path / "avg05", [0.1, 0.5, 0.95], lr=0.05, target_accuracy=0.9)
    make_run(tmp_path / "avg1", [0.1, 0.95], lr=0.1, target_accuracy=0.9)
    make_run(tmp_path / "adam001", [0.1, 0.5, 0.5, 0.95], server_optimizer="adam", server_lr=0.01,
             target_accuracy=0.9)
    make_run(tmp_path / "adam003", [0.1, 0.5, 0.95], server_optimizer="adam", server_lr=0.03, target_accuracy=0.9)
    make_run(tmp_path / "prox", [0.1, 0.8], algorithm="fedprox", prox_mu=0.1, target_accuracy=0.9)
    make_run(tmp_path / "dp", [0.1, 0.3], dp_clip=1.0, dp_noise_multiplier=1.0, target_accuracy=0.9)
    rows = table(capsys, *sorted(tmp_path.iterdir()), "--best-lr")
    got = {r["optimizer"]: (r["η"], r["tuned (grid)"], r["rounds to target"]) for r in rows}
    assert got == {
        "FedAvg": ("0.1", "η 0.1 (0.05, 0.1)", "1"),
        "FedAdam": ("0.1", "server η 0.03 (0.01, 0.03)", "2"),
        "FedProx": ("0.1", "(one run)", "not in 1"),
        "DP-FedAvg (z = 1)": ("0.1", "(one run)", "not in 1"),
    }


# ---- mistakes (issue 25): one line each, no traceback --------------------------------------------------

PLOT_ERROR, SCALING_ERROR = re.compile("^fedmpi.plot: error: "), re.compile("^fedmpi.scaling: error: ")


def test_an_output_in_a_missing_folder_is_one_line(sweep_folder, tmp_path):
    missing = tmp_path / "nonexistent"
    r = plot("table", sweep_folder / "E1_lr0.1", "-o", missing / "t.md")
    one_error_line(r, [f"-o {missing / 't.md'}: cannot write: No such file or directory"], PLOT_ERROR)
    r = plot(sweep_folder / "E1_lr0.1", "-o", missing / "a.png")
    one_error_line(r, [f"-o {missing / 'a.png'}: cannot write: No such file or directory"], PLOT_ERROR)
    assert not missing.exists()


def test_a_target_outside_0_to_1_is_refused(capsys, sweep_folder):
    one_error_line(plot("table", sweep_folder / "E1_lr0.1", "--target", "nan"),
                   ["--target", "must lie in (0, 1]", "got nan"], PLOT_ERROR)
    from fedmpi.plot import main
    for target in ("inf", "0", "-0.5", "99"):  # 99: a percentage
        for argv in (["table", str(sweep_folder / "E1_lr0.1")], [str(sweep_folder / "E1_lr0.1"), "-o", "x.png"]):
            capsys.readouterr()
            assert main([*argv, "--target", target]) == 2
            err = capsys.readouterr().err
            assert err.startswith("fedmpi.plot: error: ") and f"got {target}" in err and err.count("\n") == 1, err


def scaling(*args):
    """`python -m fedmpi.scaling ARGS` as a real process."""
    return launch(0, [str(a) for a in args], module="fedmpi.scaling", timeout=TIMEOUT_S)


def test_scaling_gather_mistakes_are_one_line(tmp_path):
    run = make_run(tmp_path / "study" / "p001", [0.1, 0.5])
    (run / "summary.json").write_text('{"ranks": 1, "wall_seco')  # truncated
    r = scaling("gather", tmp_path / "study", "-o", tmp_path / "r.csv")
    one_error_line(r, [str(run / "summary.json"), "cannot read"], SCALING_ERROR)

    (run / "summary.json").write_text(json.dumps({"ranks": 1}))
    timed = {"round": 1, "clients": [0], "test_accuracy": 0.5,
             "time": {"seconds": 1.0, "bcast": 0.0, "reduce": 0.0, "train_sum": 0.9, "eval_sum": 0.1}}
    (run / "metrics.jsonl").write_text(json.dumps({"round": 0, "test_accuracy": 0.1}) + "\n" + json.dumps(timed) + "\n")
    missing = tmp_path / "nonexistent" / "r.csv"
    r = scaling("gather", tmp_path / "study", "-o", missing)
    one_error_line(r, [f"-o {missing}: cannot write: No such file or directory"], SCALING_ERROR)
    assert scaling("gather", tmp_path / "study", "-o", tmp_path / "r.csv").returncode == 0  # the run itself is fine


def test_scaling_plan_refuses_a_per_worker_count_below_1(federation, tmp_path):
    for count in ("-3", "0"):  # -3 planned negative fractions, 0 silently meant 1
        r = scaling("plan", "weak", "--ranks", "1,2", "--out", tmp_path / "study", "--per-worker", count, "--",
                    "--data", federation(clients=10))
        one_error_line(r, [f"--per-worker {count}: ", ">= 1"], SCALING_ERROR)
    assert not (tmp_path / "study").exists()
