"""Tests of reproduce.py: the quick grid on ``tiny`` writes every table and figure, a second invocation trains
nothing, tuning picks on validation and the tables use the choice, resuming refuses runs made with other
settings, and the paired tests' p-values match closed forms."""

import csv
import json
import math

import numpy as np
import pytest

import reproduce

TABLES = ("overall", "ablations", "aggr_scoring", "layers")
FIGURES = ("overall.png", "layers.png", "curves.png")
FAST = ["--budget", "quick", "--seeds", "1", "--set", "num_epoch=1", "--set", "dim_latent=16"]


@pytest.fixture(scope="module")
def quick_tiny(tiny_dir, tmp_path_factory):
    """The whole quick grid on ``tiny``, one seed, one epoch per run: ``(output root, dataset dir)``."""
    out = tmp_path_factory.mktemp("reproduce")
    assert reproduce.main(["--data", str(tiny_dir), *FAST, "--out", str(out)]) == 0
    return out, out / tiny_dir.name


def _run_files(dataset_dir):
    """``{path: mtime_ns}`` of every file that a run wrote (tables, figures and report are rebuilt)."""
    rebuilt = {"tables", "figures", "report.md", "significance.json"}
    return {p: p.stat().st_mtime_ns for p in dataset_dir.rglob("*")
            if p.is_file() and p.relative_to(dataset_dir).parts[0] not in rebuilt}


def test_quick_grid_writes_every_table_and_figure(quick_tiny):
    _, ds = quick_tiny
    for table in TABLES:
        md = (ds / "tables" / f"{table}.md").read_text()
        with open(ds / "tables" / f"{table}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(md.splitlines()) == len(rows) + 2 and rows
        assert all(r["seeds"] == "1" and 0 <= float(r["recall@10_mean"]) <= 1 for r in rows)
    overall = [r["name"] for r in csv.DictReader(open(ds / "tables" / "overall.csv"))]
    assert overall == list(reproduce.OVERALL)
    assert len(list(csv.DictReader(open(ds / "tables" / "aggr_scoring.csv")))) == 6
    for figure in FIGURES:
        assert (ds / "figures" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sig = json.loads((ds / "significance.json").read_text())
    assert sig["model"] == "gcn_phr" and sig["baseline"] in reproduce.BASELINES and sig["seeds"] == [0]
    assert 0 < sig["tests"]["recall@10"]["p_permutation"] <= 1
    report = (ds / "report.md").read_text()
    assert all(f"figures/{f}" in report for f in FIGURES) and "Significance" in report
    # the full model is trained once and shown in every group
    assert not (ds / "ablations" / "full").exists() and not (ds / "layers" / "layers2").exists()
    for run in ("overall/csmn", "ablations/graph_homogeneous", "aggr_scoring/add_fully_con", "layers/layers3"):
        files = {p.name for p in (ds / run / "seed0").iterdir()}
        assert files >= {"config.json", "metrics.csv", "best.pt", "results.json", "test_per_line.npz", "train.log"}
    config = json.loads((ds / "ablations" / "graph_homogeneous" / "seed0" / "config.json").read_text())
    assert config["graph"] == "homogeneous" and config["num_workers"] == 1 and config["baseline_size"] == "small"


def test_second_invocation_trains_nothing(quick_tiny, tiny_dir, capsys):
    out, ds = quick_tiny
    before = _run_files(ds)
    assert len(before) > 22 * 5
    assert reproduce.main(["--data", str(tiny_dir), *FAST, "--out", str(out)]) == 0
    assert "22 runs on tiny (quick budget, 1 seeds, cpu); 22 finished before, 0 to train" in capsys.readouterr().out
    assert _run_files(ds) == before


def test_parallel_jobs_give_the_same_results(quick_tiny, tiny_dir, tmp_path):
    _, ds = quick_tiny
    assert reproduce.main(["--data", str(tiny_dir), *FAST, "--groups", "layers", "--jobs", "2",
                           "--out", str(tmp_path)]) == 0
    for run in ("overall/gcn_phr", "layers/layers1", "layers/layers3"):
        parallel = json.loads((tmp_path / "tiny" / run / "seed0" / "results.json").read_text())
        serial = json.loads((ds / run / "seed0" / "results.json").read_text())
        assert parallel["test"] == serial["test"] and parallel["best_epoch"] == serial["best_epoch"]


def test_resume_refuses_runs_made_with_other_settings(quick_tiny, tiny_dir):
    out, _ = quick_tiny
    with pytest.raises(SystemExit, match="other settings .*dim_latent: 16 there, 32 now"):
        reproduce.main(["--data", str(tiny_dir), *FAST, "--set", "dim_latent=32", "--out", str(out)])


def test_tuning_picks_on_validation_and_the_tables_use_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                      # the 'tiny' preset is built under ./data, runs go to ./runs
    assert reproduce.main(["--data", "tiny", *FAST, "--groups", "layers", "--tune"]) == 0
    ds = tmp_path / "runs" / "reproduce" / "tiny"
    tuning = json.loads((ds / "tuning.json").read_text())
    assert list(tuning["models"]) == ["gcn_phr"]     # the layers' rows use GCN-PHR's choice
    choice = tuning["models"]["gcn_phr"]
    grid = reproduce.TUNE_GRID["quick"]
    assert len(choice["trials"]) == len(grid["l_r"]) * len(grid["weight_decay"])
    assert choice["val_recall@10"] == max(t["val_recall@10"] for t in choice["trials"])
    for run in ("overall/gcn_phr", "layers/layers1", "layers/layers3"):
        config = json.loads((ds / run / "seed0" / "config.json").read_text())
        assert (config["l_r"], config["weight_decay"]) == (choice["l_r"], choice["weight_decay"])
    assert not (ds / "overall" / "utm").exists() and "Tuned hyper-parameters" in (ds / "report.md").read_text()
    winner = ds / "tune" / "gcn_phr" / f"lr{choice['l_r']:g}_wd{choice['weight_decay']:g}" / "seed0"
    assert (ds / "overall/gcn_phr/seed0/results.json").read_text() == (winner / "results.json").read_text()


def test_grid_rows():
    rows = reproduce.grid_rows(reproduce.GROUPS, tune=True)
    release = next(r for r in rows if r.name == "gcn_phr_release")
    assert release.tune_as is None and release.settings == {"model_name": "gcn_phr"}
    assert {r.run for r in rows if r.name in ("full", "mean_cat", "layers2")} == {reproduce.FULL_RUN}
    assert len(reproduce.unique_runs(rows)) == 12 + 4 + 5 + 2
    assert "gcn_phr_release" not in {r.name for r in reproduce.grid_rows(reproduce.GROUPS, tune=False)}
    assert all(r.tune_as is None for r in rows if r.name in ("pop", "userpop", "knn"))


@pytest.mark.parametrize("item, tune, message", [
    ("seed=3", False, "set by the grid"), ("num_layers=3", False, "set by the grid"),
    ("l_r=0.1", True, "set by the grid and --tune"), ("num_epoch=x", False, "expected a value of type int"),
    ("nonsense=1", False, "FIELD=VALUE"),
])
def test_set_values_are_checked(item, tune, message):
    with pytest.raises(SystemExit, match=message):
        reproduce.parse_sets([item], tune=tune)
    assert reproduce.parse_sets(["num_epoch=2", "l_r=0.5", "loss=bpr"], tune=False) == {
        "num_epoch": 2, "l_r": 0.5, "loss": "bpr"}


RECOMMENDED = ["norm=pair", "hide_own=videos", "neg_per_row=32", "weight_decay=0.01"]


def test_gcn_set_reaches_the_gcn_phr_rows_only(tmp_path):
    gcn = reproduce.parse_sets(RECOMMENDED, tune=False, flag="--gcn_set")
    rows = reproduce.grid_rows(reproduce.GROUPS, tune=True)
    configs = {(r.group, r.name): reproduce.make_config(tmp_path, reproduce.Job("x", r, 0), {}, {}, gcn)
               for r in rows}                                   # make_config validates each one
    defaults = reproduce.Config()
    for (_, name), cfg in configs.items():
        knobs = (cfg.norm, cfg.hide_own, cfg.neg_per_row, cfg.weight_decay)
        if cfg.model_name != "gcn_phr" or name == "gcn_phr_release":
            assert knobs == (defaults.norm, defaults.hide_own, defaults.neg_per_row, defaults.weight_decay), name
        elif name == "graph_homogeneous":
            assert knobs == ("none", "videos", 32, 0.01)
        else:
            assert knobs == ("pair", "videos", 32, 0.01), name
    assert configs["ablations", "attention_off"].attention == "off"   # the row's own setting still applies
    assert sum(cfg.norm == "pair" for cfg in configs.values()) == 1 + 4 + 6 + 3  # overall, ablations, aggr, layers
    with pytest.raises(SystemExit, match="error: --gcn_set model_name=mf: model_name is set by the grid"):
        reproduce.parse_sets(["model_name=mf"], tune=False, flag="--gcn_set")


def test_bad_set_choice_is_caught_by_config(tmp_path):
    job = reproduce.Job("x", reproduce.grid_rows(["overall"], tune=False)[0], 0)
    with pytest.raises(ValueError, match="--loss"):
        reproduce.make_config(tmp_path, job, reproduce.parse_sets(["loss=maybe"], tune=False), {})


@pytest.mark.parametrize("t, df", [(0.3, 1), (1.0, 1), (4.0, 1), (0.5, 2), (2.0, 2), (7.0, 2)])
def test_t_test_p_matches_closed_forms(t, df):
    closed = 1 - 2 / math.pi * math.atan(t) if df == 1 else 1 - t / math.sqrt(2 + t * t)
    assert reproduce.t_test_p(t, df) == pytest.approx(closed, rel=1e-9)


def test_t_test_p_tends_to_the_normal():
    assert reproduce.t_test_p(1.96, 1e6) == pytest.approx(math.erfc(1.96 / math.sqrt(2)), rel=1e-4)
    assert reproduce._t_quantile_975(1e6) == pytest.approx(1.96, abs=1e-3)
    assert reproduce._t_quantile_975(10) == pytest.approx(2.228, abs=1e-3)


def test_paired_tests():
    rng = np.random.default_rng(0)
    a = rng.random(300)
    same = reproduce.paired_tests(a, a, permutations=500)
    assert same["p_ttest"] == 1.0 and same["p_permutation"] == 1.0 and same["mean_difference"] == 0.0
    shifted = reproduce.paired_tests(a + 0.05 + 0.01 * rng.standard_normal(300), a, permutations=500)
    assert shifted["p_ttest"] < 1e-6 and shifted["p_permutation"] == 1 / 501
    lo, hi = shifted["ci95"]
    assert lo < shifted["mean_difference"] < hi and lo > 0
    noise = reproduce.paired_tests(a + 0.1 * rng.standard_normal(300), a, permutations=2000)
    assert noise["p_ttest"] == pytest.approx(noise["p_permutation"], abs=0.05)   # the two tests agree
