"""The paper's tables from one command: baselines (SPEC §4), ablations (SPEC §3.2), protocol (SPEC §5).

Every run is one ``train.run`` into its own directory, so data, negatives, early stopping on validation
Recall@10, checkpoints and evaluation are the ones of ``train.py``::

    python reproduce.py --budget quick                   # synthetic 'small' preset, CPU, about 30 min
    python reproduce.py --data instagram yfcc --tune     # the paper's settings, meant for a GPU
    python reproduce.py --data /path/to/instagram /path/to/yfcc --tune   # the authors' data (project format)
    python reproduce.py --budget quick --groups ablations aggr_scoring layers --set num_epoch=300 \
        --set patience=25 --gcn_set norm=pair --gcn_set hide_own=videos --gcn_set neg_per_row=32 \
        --gcn_set weight_decay=0.01                      # the ablations with the recommended setting

``--set`` gives every run a Config value; ``--gcn_set`` gives one to GCN-PHR and its variants only, so the
baselines keep their own settings (and the homogeneous graph keeps ``norm=none``: PairNorm is defined on
the pair graph's layers).

Grid (one table per group; every GCN-PHR variant starts from the full model's settings)
---------------------------------------------------------------------------------------
- ``overall``: pop, userpop, content, mf, knn, utm, contagnet, csmn, ushm, released, gcn_phr; with ``--tune``
  also ``gcn_phr_release``, GCN-PHR with the release's hyper-parameters untouched;
- ``ablations``: full model, ``--attention off``, ``--messages video``, ``--messages hashtag``,
  ``--graph homogeneous``;
- ``aggr_scoring``: ``--aggr_mode`` mean / max / add × ``--scoring_mode`` cat / fully_con;
- ``layers``: ``--num_layers`` 1 / 2 / 3.

A row whose settings are the full model's (e.g. mean × cat, 2 layers) shows the run ``overall/gcn_phr``
instead of training it again. Runs go to ``OUT/<dataset>/<group>/<name>/seed<k>`` (``train.py``'s files
plus ``train.log``); a run whose ``results.json`` exists is skipped, so an interrupted reproduction
resumes where it stopped (a finished run made with other settings is an error, not silently reused).

Tuning (``--tune``)
-------------------
Per dataset and trainable model, seed 0 trains every (learning rate, weight decay) pair of the budget's
grid (``TUNE_GRID``) with early stopping, into ``OUT/<dataset>/tune/<model>/lr<l_r>_wd<weight_decay>``,
and keeps the pair with the best validation Recall@10 (the first in grid order on ties). The choice,
every trial and its best epoch go to ``OUT/<dataset>/tuning.json``; the runs of the tables then use the
chosen pair, with early stopping on validation as in tuning (seed 0 of a model's own row is its winning
trial, copied rather than trained again). The GCN-PHR variants of ``ablations``,
``aggr_scoring`` and ``layers`` use GCN-PHR's pair. Without ``--tune`` every run keeps ``Config``'s
defaults (the release's).

Written per dataset, under ``OUT/<dataset>/``
---------------------------------------------
- ``tables/<group>.md`` and ``tables/<group>.csv``: mean ± std over seeds (sample std) of P, R, NDCG and
  Hit at 5 and 10 on test, at each run's best validation epoch;
- ``significance.json``: GCN-PHR against the best baseline (chosen on validation Recall@10 among the
  SPEC §4 baselines and reference rankers) over test lines: per-line Recall@10 and NDCG@10 averaged
  over seeds, a paired t-test and a sign-flip permutation test (both two-sided);
- ``figures/overall.png`` (bar chart with error bars), ``figures/layers.png`` (recall against the number
  of layers), ``figures/curves.png`` (validation Recall@10 per epoch, every trainable model and seed);
- ``report.md``: all of the above in one page.

Budgets
-------
``quick``: the ``small`` preset, CPU, one torch thread per run (faster than two on a 2-core machine
for these small graphs), ``baseline_size small``, at most ``QUICK_EPOCHS`` = 15 epochs with patience
``QUICK_PATIENCE`` = 5. Measured CPU time per run of 15 epochs on ``small``: GCN-PHR ≈ 20 s (each of its
12 variants alike), ConTagNet ≈ 37 s, CSMN ≈ 20 s per epoch (≈ 5 min; half of the whole grid); one
seed of the grid ≈ 8–10 min, three seeds ≈ 30 min on one core, about half that with ``--jobs 2`` on an
idle 2-core machine; ``--tune`` adds ≈ 20 min of CPU time. ``paper``: ``Config``'s defaults (the
papers' sizes, 50 epochs, patience 10) on ``instagram`` and ``yfcc`` or the given data, CUDA when
available.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm

import evaluation
import make_data
import train
from data_load import write_json_atomic
from gcn_layers import AGGRS
from model import Config

GROUPS = ("overall", "ablations", "aggr_scoring", "layers")
BASELINES = ("pop", "userpop", "content", "mf", "knn", "utm", "contagnet", "csmn", "ushm")
UNTRAINED = ("pop", "userpop", "knn")
OVERALL = (*BASELINES, "released", "gcn_phr")
LABELS = {"pop": "Popularity", "userpop": "User popularity", "content": "Content", "mf": "MF",
          "knn": "Neighbour voting", "utm": "UTM", "contagnet": "ConTagNet", "csmn": "CSMN", "ushm": "USHM",
          "released": "Released architecture", "gcn_phr": "GCN-PHR"}
SCORINGS = ("cat", "fully_con")
LAYERS = (1, 2, 3)
KS = (5, 10)
METRIC_NAMES = tuple(f"{m}@{k}" for k in KS for m in evaluation.METRICS)
SHORT = {"precision": "P", "recall": "R", "ndcg": "NDCG", "hit": "Hit"}
FULL_RUN = "overall/gcn_phr"
# Fields the grid sets per run; --set may not change them.
GRID_FIELDS = ("model_name", "data_path", "seed", "attention", "messages", "graph", "aggr_mode",
               "scoring_mode", "num_layers", "PATH_weight_load", "PATH_weight_save")
# Fields that do not change a run's results: a finished run made with other values is still reused.
IGNORED_ON_RESUME = ("data_path", "num_workers", "eval_batch_size")
QUICK_EPOCHS, QUICK_PATIENCE = 15, 5
TUNE_GRID = {  # learning rate × weight decay (Adam, coupled L2 on the summed loss, as train.py)
    "quick": {"l_r": (1e-3, 1e-2), "weight_decay": (0.0, 0.1)},
    "paper": {"l_r": (1e-4, 1e-3, 1e-2), "weight_decay": (0.0, 0.01, 0.1)},
}
PERMUTATIONS = 10_000


@dataclass(frozen=True)
class Budget:
    data: tuple[str, ...]   # default --data
    settings: dict          # Config values of every run
    device: str             # default --device


BUDGETS = {
    "quick": Budget(("small",), {"num_epoch": QUICK_EPOCHS, "patience": QUICK_PATIENCE,
                                 "baseline_size": "small", "num_workers": 1}, "cpu"),
    "paper": Budget(("instagram", "yfcc"), {}, "auto"),
}


# --------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of a table: a run directory (``run``, below the dataset) trained with ``settings`` and,
    under ``--tune``, the learning rate and weight decay tuned for ``tune_as`` (None: untouched). A GCN-PHR
    row also takes the ``--gcn_set`` values, unless ``release`` (the release's settings, as published)."""

    group: str
    name: str
    label: str
    settings: dict
    tune_as: str | None = "gcn_phr"
    run: str = ""
    release: bool = False

    def __post_init__(self):
        self.run = self.run or f"{self.group}/{self.name}"


def grid_rows(groups, tune: bool) -> list[Row]:
    """The rows of the selected tables, in table order."""
    full = {"model_name": "gcn_phr"}
    rows = []
    if "overall" in groups:
        rows += [Row("overall", m, LABELS[m], {"model_name": m}, None if m in UNTRAINED else m) for m in OVERALL]
        if tune:
            rows.append(Row("overall", "gcn_phr_release", "GCN-PHR, release hyper-parameters", full, None,
                            release=True))
    if "ablations" in groups:
        rows += [Row("ablations", "full", "GCN-PHR (full model)", full, run=FULL_RUN),
                 Row("ablations", "attention_off", "uniform attention (--attention off)",
                     {**full, "attention": "off"}),
                 Row("ablations", "messages_video", "no hashtag–user messages (--messages video)",
                     {**full, "messages": "video"}),
                 Row("ablations", "messages_hashtag", "no video messages (--messages hashtag)",
                     {**full, "messages": "hashtag"}),
                 Row("ablations", "graph_homogeneous", "plain GCN on a homogeneous graph (--graph homogeneous)",
                     {**full, "graph": "homogeneous", "norm": "none"})]   # PairNorm is for the pair graph
    if "aggr_scoring" in groups:
        for aggr in AGGRS:
            for scoring in SCORINGS:
                is_full = (aggr, scoring) == (Config.aggr_mode, Config.scoring_mode)
                rows.append(Row("aggr_scoring", f"{aggr}_{scoring}", f"{aggr} × {scoring}",
                                {**full, "aggr_mode": aggr, "scoring_mode": scoring},
                                run=FULL_RUN if is_full else ""))
    if "layers" in groups:
        rows += [Row("layers", f"layers{n}", f"{n} layer{'s' if n > 1 else ''}", {**full, "num_layers": n},
                     run=FULL_RUN if n == Config.num_layers else "") for n in LAYERS]
    return rows


def unique_runs(rows: list[Row]) -> list[Row]:
    """One row per run directory (the first that names it), full model first."""
    seen: dict[str, Row] = {}
    for row in sorted(rows, key=lambda r: r.run != FULL_RUN):
        seen.setdefault(row.run, row)
    return list(seen.values())


@dataclass
class Job:
    """One call of ``train.run``: ``path`` is below ``OUT/<dataset>/``."""

    path: str
    row: Row
    seed: int
    tuning: dict = field(default_factory=dict)   # l_r and weight_decay of a tuning trial


def tuning_jobs(rows: list[Row], budget: str) -> list[Job]:
    models = [m for m in OVERALL if m in {r.tune_as for r in rows}]
    grid = TUNE_GRID[budget]
    return [Job(f"tune/{m}/lr{lr:g}_wd{wd:g}/seed0", Row("tune", m, LABELS[m], {"model_name": m}, None), 0,
                {"l_r": lr, "weight_decay": wd})
            for m in models for lr in grid["l_r"] for wd in grid["weight_decay"]]


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
def resolve_data(entries) -> dict[str, Path]:
    """``{dataset name: directory}``: an existing directory is used as is, a preset name is built
    (once) under ``data/`` by ``make_data.ensure``."""
    out: dict[str, Path] = {}
    for entry in entries:
        path = Path(entry)
        if not path.is_dir():
            if entry not in make_data.PRESETS:
                raise SystemExit(f"error: --data {entry}: expected a dataset directory or a preset name "
                                 f"({', '.join(make_data.PRESETS)})")
            path = make_data.ensure(entry, root="data", seed=0)
        if path.name in out:
            raise SystemExit(f"error: --data: two datasets named {path.name!r} ({out[path.name]}, {path})")
        out[path.name] = path
    return out


def parse_sets(items, tune: bool, flag: str = "--set") -> dict:
    """``--set`` (or ``flag``) ``FIELD=VALUE`` pairs, typed by the Config field."""
    types = {f.name: str(f.type) for f in fields(Config)}
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in types:
            raise SystemExit(f"error: {flag} {item}: expected FIELD=VALUE with a Config field "
                             f"(python train.py --help lists them)")
        if name in GRID_FIELDS or (tune and name in ("l_r", "weight_decay")):
            raise SystemExit(f"error: {flag} {item}: {name} is set by the grid{' and --tune' if tune else ''}")
        kind = types[name]
        try:
            if kind == "bool":
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                out[name] = text.lower() in ("true", "1")
            else:
                out[name] = {"int": int, "float": float, "str": str}[kind](text)
        except ValueError:
            raise SystemExit(f"error: {flag} {item}: expected a value of type {kind}") from None
    return out


def make_config(data: Path, job: Job, base: dict, tuned: dict, gcn: dict | None = None) -> Config:
    """The run's Config: ``base`` (budget and ``--set``), the tuned or trial learning rate and weight decay,
    ``gcn`` (``--gcn_set``) on a GCN-PHR row that is not the release's, then the row's own settings."""
    chosen = tuned.get(job.row.tune_as, {}) if job.row.tune_as else {}
    own = gcn if gcn and job.row.settings.get("model_name") == "gcn_phr" and not job.row.release else {}
    values = {**base, **{k: chosen[k] for k in ("l_r", "weight_decay") if k in chosen}, **job.tuning, **own,
              **job.row.settings, "data_path": str(data), "seed": job.seed}
    cfg = Config(**values)
    cfg.validate()
    return cfg


def _key(cfg: Config) -> str:
    """What identifies a run's results: its config less the fields that do not change them."""
    return json.dumps({k: v for k, v in asdict(cfg).items() if k not in IGNORED_ON_RESUME}, sort_keys=True)


def check_same_config(run_dir: Path, cfg: Config) -> None:
    saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    wanted = {k: v for k, v in asdict(cfg).items() if k not in IGNORED_ON_RESUME}
    diff = [f"{k}: {saved.get(k)!r} there, {v!r} now" for k, v in wanted.items() if saved.get(k) != v]
    if diff:
        raise SystemExit(f"error: {run_dir}: a finished run with other settings ({'; '.join(diff[:3])}); "
                         "remove it or pass another --out")


def execute(run_dir: Path, cfg: Config, device: torch.device) -> tuple[dict | str, float]:
    """``train.run`` into ``run_dir`` with its log in ``run_dir/train.log``: (results, seconds), or
    (the error, seconds) when the run fails."""
    start = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "w", encoding="utf-8") as fh:
        try:
            results = train.run(cfg, run_dir, device, progress=False,
                                log=lambda *a: print(*a, file=fh, flush=True))
        except (SystemExit, RuntimeError, ValueError) as err:
            print(f"failed: {err}", file=fh)
            return f"{type(err).__name__}: {err}", time.time() - start
    return results, time.time() - start


def run_all(todo: list[tuple[str, Path, Config]], device: torch.device, workers: int):
    """Yield ``(label, run_dir, results or error, seconds)`` as the runs of ``todo`` finish. With
    ``workers`` > 1 that many train at once, in spawned processes (each sets its torch threads from
    ``num_workers``: keep it at 1 on a CPU)."""
    if workers == 1:
        for label, run_dir, cfg in todo:
            yield label, run_dir, *execute(run_dir, cfg, device)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(execute, run_dir, cfg, device): (label, run_dir) for label, run_dir, cfg in todo}
        for future in as_completed(futures):
            yield *futures[future], *future.result()


def choose(out: Path, jobs: list[Job], budget: str) -> dict:
    """Best (l_r, weight_decay) per model on validation Recall@10, over the trials that finished (a trial
    whose loss diverged is recorded as failed); writes ``tuning.json``."""
    models: dict[str, dict] = {}
    for job in jobs:
        entry = models.setdefault(job.row.name, {"trials": []})
        path = out / job.path / "results.json"
        if not path.is_file():
            entry["trials"].append({**job.tuning, "failed": True})
            continue
        results = json.loads(path.read_text(encoding="utf-8"))
        trial = {**job.tuning, "val_recall@10": results["val"]["recall@10"], "best_epoch": results["best_epoch"]}
        entry["trials"].append(trial)
        if "val_recall@10" not in entry or trial["val_recall@10"] > entry["val_recall@10"]:
            entry.update(trial)
    failed = [m for m, entry in models.items() if "l_r" not in entry]
    if failed:
        raise SystemExit(f"error: {out}: every tuning trial of {', '.join(failed)} failed (see their train.log)")
    write_json_atomic(out / "tuning.json", {
        "selection": "best validation Recall@10 (seed 0, early stopping); first in grid order on ties",
        "grid": TUNE_GRID[budget], "models": models})
    return models


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        for coef in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                     -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + coef * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + coef / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return front * h / a


def t_test_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def paired_tests(a: np.ndarray, b: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """Paired t-test and sign-flip permutation test of mean(a − b) = 0 over lines, two-sided.

    ``a``, ``b`` [L]. The permutation p-value is (1 + #{|mean of sign-flipped differences| ≥ |observed|})
    / (1 + permutations), flips drawn from a generator seeded with ``seed``.
    """
    diff = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))   # [L]
    n = diff.size
    mean = float(diff.mean())
    sd = float(diff.std(ddof=1)) if n > 1 else 0.0
    if sd == 0.0:
        t, p_t, half = (0.0, 1.0, 0.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0, 0.0)
    else:
        se = sd / math.sqrt(n)
        t, p_t = mean / se, t_test_p(mean / se, n - 1)
        half = se * _t_quantile_975(n - 1)
    rng = np.random.default_rng(seed)
    observed, hits = abs(diff.sum()) * (1 - 1e-12), 0
    for start in range(0, permutations, 1000):
        signs = rng.integers(0, 2, size=(min(1000, permutations - start), n)) * 2 - 1   # [chunk, L]
        hits += int((np.abs(signs @ diff) >= observed).sum())
    return {"lines": n, "mean_difference": mean, "ci95": [mean - half, mean + half], "t": t, "df": n - 1,
            "p_ttest": p_t, "p_permutation": (hits + 1) / (permutations + 1), "permutations": permutations}


def _t_quantile_975(df: float) -> float:
    """The 97.5 % quantile of Student's t (bisection on :func:`t_test_p`)."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_test_p(mid, df) > 0.05 else (lo, mid)
    return (lo + hi) / 2


# --------------------------------------------------------------------------------------------
# Tables, significance, figures
# --------------------------------------------------------------------------------------------
def collect(out: Path, rows: list[Row], seeds: range) -> dict[str, dict]:
    """Per row name: test/val metrics [n_seeds] of its finished seeds, run dirs, settings used."""
    table = {}
    for row in rows:
        dirs = [out / row.run / f"seed{s}" for s in seeds if (out / row.run / f"seed{s}" / "results.json").is_file()]
        results = [json.loads((d / "results.json").read_text(encoding="utf-8")) for d in dirs]
        config = json.loads((dirs[0] / "config.json").read_text(encoding="utf-8")) if dirs else {}
        table[f"{row.group}/{row.name}"] = {
            "row": row, "dirs": dirs,
            "test": {m: np.array([r["test"][m] for r in results]) for m in METRIC_NAMES},
            "val": {m: np.array([r["val"][m] for r in results]) for m in METRIC_NAMES},
            "best_epoch": np.array([r["best_epoch"] for r in results]),
            "l_r": config.get("l_r"), "weight_decay": config.get("weight_decay")}
    return table


def _std(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if x.size > 1 else 0.0


def write_table(entries: list[dict], md_path: Path, csv_path: Path) -> str:
    """Markdown and CSV of one group; returns the Markdown. The best mean of each column is bold."""
    md_path.parent.mkdir(parents=True, exist_ok=True)
    best = {m: max((e["test"][m].mean() for e in entries if e["dirs"]), default=None) for m in METRIC_NAMES}
    header = ["Model", *[f"{SHORT[m.split('@')[0]]}@{m.split('@')[1]}" for m in METRIC_NAMES], "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "label", "seeds", "l_r", "weight_decay", "best_epoch_mean",
                         *[f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")]])
        for e in entries:
            row, n = e["row"], len(e["dirs"])
            cells = []
            for m in METRIC_NAMES:
                values = e["test"][m]
                if not n:
                    cells.append("—")
                    continue
                text = f"{values.mean():.4f}" + (f" ± {_std(values):.4f}" if n > 1 else "")
                cells.append(f"**{text}**" if math.isclose(values.mean(), best[m]) else text)
            lines.append("| " + " | ".join([row.label, *cells, str(n)]) + " |")
            trained = row.settings["model_name"] not in UNTRAINED
            writer.writerow([row.name, row.label, n, *((e["l_r"], e["weight_decay"]) if trained else ("", "")),
                             f"{e['best_epoch'].mean():.1f}" if n else "",
                             *[f"{v:.6f}" for m in METRIC_NAMES
                               for v in ((e["test"][m].mean(), _std(e["test"][m])) if n else (math.nan,) * 2)]])
    text = "\n".join(lines) + "\n"
    md_path.write_text(text, encoding="utf-8")
    return text


def significance(table: dict) -> dict | None:
    """GCN-PHR against the baseline with the best mean validation Recall@10, over test lines."""
    model = table.get(FULL_RUN)
    candidates = [table[f"overall/{b}"] for b in BASELINES if table.get(f"overall/{b}", {}).get("dirs")]
    if not model or not model["dirs"] or not candidates:
        return None
    base = max(candidates, key=lambda e: e["val"]["recall@10"].mean())
    seeds = sorted({d.name for d in model["dirs"]} & {d.name for d in base["dirs"]})   # ["seed0", ...]
    out = {"model": "gcn_phr", "baseline": base["row"].name, "baseline_chosen_by": "mean validation Recall@10",
           "seeds": [int(s.removeprefix("seed")) for s in seeds], "tests": {}}
    for metric in ("recall@10", "ndcg@10"):
        per_line = {}
        for key, entry in (("model", model), ("baseline", base)):
            runs = {d.name: d for d in entry["dirs"]}
            per_line[key] = np.mean([np.load(runs[s] / "test_per_line.npz")[metric] for s in seeds], axis=0)  # [L]
        out["tests"][metric] = {"mean_model": float(per_line["model"].mean()),
                                "mean_baseline": float(per_line["baseline"].mean()),
                                **paired_tests(per_line["model"], per_line["baseline"])}
    return out


def significance_md(sig: dict | None) -> str:
    if sig is None:
        return "No significance test: it needs the overall group's GCN-PHR and at least one baseline.\n"
    lines = [f"GCN-PHR against the best baseline, **{LABELS[sig['baseline']]}** (chosen on mean validation "
             f"Recall@10), over {next(iter(sig['tests'].values()))['lines']} test lines; per-line values "
             f"averaged over seeds {', '.join(map(str, sig['seeds']))}; two-sided paired t-test and sign-flip "
             f"permutation test ({PERMUTATIONS:,} random flips).", "",
             "| metric | GCN-PHR | baseline | difference (95% CI) | paired t | p (t-test) | p (sign-flip) |",
             "|---|---|---|---|---|---|---|"]
    for metric, t in sig["tests"].items():
        lo, hi = t["ci95"]
        lines.append(f"| {metric} | {t['mean_model']:.4f} | {t['mean_baseline']:.4f} | {t['mean_difference']:+.4f} "
                     f"({lo:+.4f}, {hi:+.4f}) | {t['t']:.2f} | {t['p_ttest']:.2g} | {t['p_permutation']:.2g} |")
    return "\n".join(lines) + "\n"


def plot_overall(entries: list[dict], path: Path) -> None:
    entries = [e for e in entries if e["dirs"]]
    fig = Figure(figsize=(max(6.0, 0.8 * len(entries) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    x, width = np.arange(len(entries)), 0.4
    for i, metric in enumerate(("recall@10", "ndcg@10")):
        ax.bar(x + (i - 0.5) * width, [e["test"][metric].mean() for e in entries], width,
               yerr=[_std(e["test"][metric]) for e in entries], capsize=3, label=f"test {metric}")
    ax.set_xticks(x, [e["row"].label for e in entries], rotation=30, ha="right")
    ax.set_ylabel("mean over seeds (± std)")
    ax.set_title("Overall comparison")
    ax.legend()
    fig.savefig(path, dpi=120)


def plot_layers(entries: list[dict], path: Path) -> None:
    entries = [e for e in entries if e["dirs"]]
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    ax = fig.subplots()
    layers = [e["row"].settings["num_layers"] for e in entries]
    for metric in ("recall@10", "ndcg@10"):
        ax.errorbar(layers, [e["test"][metric].mean() for e in entries],
                    yerr=[_std(e["test"][metric]) for e in entries], marker="o", capsize=3, label=f"test {metric}")
    ax.set_xticks(list(LAYERS))
    ax.set_xlabel("number of layers L")
    ax.set_ylabel("mean over seeds (± std)")
    ax.set_title("GCN-PHR: depth")
    ax.legend()
    fig.savefig(path, dpi=120)


def plot_curves(entries: list[dict], path: Path) -> None:
    fig = Figure(figsize=(8.5, 4.2), layout="constrained")
    ax = fig.subplots()
    palette = colormaps["tab20"]
    colors = (palette((2 * i) % 20 + (2 * i) // 20) for i in range(20))   # the dark shades first
    for e in entries:
        if not e["dirs"]:
            continue
        color = next(colors)
        if e["row"].name in UNTRAINED:   # nothing to train: its validation Recall@10 as a level
            ax.axhline(e["val"]["recall@10"].mean(), color=color, ls="--", lw=1, label=e["row"].label)
            continue
        for i, d in enumerate(e["dirs"]):
            with open(d / "metrics.csv", newline="") as fh:
                rows = list(csv.DictReader(fh))
            ax.plot([int(r["epoch"]) for r in rows], [float(r["val_recall@10"]) for r in rows], color=color,
                    alpha=0.8, lw=1.2, label=e["row"].label if i == 0 else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Recall@10")
    ax.set_title("Training curves (one line per seed)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=120)


TITLES = {"overall": "Overall comparison (SPEC §4)", "ablations": "Ablations (SPEC §3.2)",
          "aggr_scoring": "Aggregation × scoring", "layers": "Number of layers"}


def report(out: Path, name: str, rows: list[Row], seeds: range, note: str, tuned: dict) -> Path:
    """Tables, significance, figures and ``report.md`` of one dataset; returns the report's path."""
    table = collect(out, rows, seeds)
    parts = [f"# Reproduction on `{name}`\n", note]
    for group in GROUPS:
        entries = [table[f"{r.group}/{r.name}"] for r in rows if r.group == group]
        if entries:
            md = write_table(entries, out / "tables" / f"{group}.md", out / "tables" / f"{group}.csv")
            parts += [f"## {TITLES[group]}\n", md]
    sig = significance(table)
    write_json_atomic(out / "significance.json", sig or {})
    parts += ["## Significance\n", significance_md(sig)]
    if tuned:
        parts += ["## Tuned hyper-parameters (`tuning.json`)\n", "| model | l_r | weight_decay | val R@10 | epoch |",
                  "|---|---|---|---|---|",
                  *[f"| {LABELS[m]} | {t['l_r']:g} | {t['weight_decay']:g} | {t['val_recall@10']:.4f} | "
                    f"{t['best_epoch']} |" for m, t in tuned.items()], ""]
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    overall = [table[f"overall/{r.name}"] for r in rows if r.group == "overall"]
    layers = [table[f"layers/{r.name}"] for r in rows if r.group == "layers"]
    plots = [("overall.png", plot_overall, overall), ("layers.png", plot_layers, layers),
             ("curves.png", plot_curves, overall)]
    for file, plot, entries in plots:
        if any(e["dirs"] for e in entries):
            plot(entries, figures / file)
            parts.append(f"![{file}](figures/{file})\n")
    path = out / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the paper's grid (baselines, ablations, aggregation × scoring, layers) for several "
                    "seeds and write tables, a significance test and figures per dataset.")
    parser.add_argument("--data", nargs="+", default=None,
                        help="dataset directories or synthetic preset names (default: the budget's, 'small' for "
                             "quick, 'instagram yfcc' for paper)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … N−1 per run (default: 3)")
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="paper",
                        help="quick: 'small' on a CPU in about 30 min; paper: the papers' settings, for a GPU "
                             "(default: paper)")
    parser.add_argument("--tune", action="store_true",
                        help="tune l_r × weight_decay per model and dataset on validation Recall@10 first")
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS),
                        help="tables to produce (default: all)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                        help="a Config value for every run, over the budget's (e.g. num_epoch=2); repeatable")
    parser.add_argument("--gcn_set", dest="gcn_sets", action="append", default=[], metavar="FIELD=VALUE",
                        help="a Config value for GCN-PHR and its variants only, over --set; the baselines and "
                             "the release row of --tune keep theirs, the homogeneous graph keeps norm=none "
                             "(e.g. the README's recommended setting: norm=pair, hide_own=videos, "
                             "neg_per_row=32, weight_decay=0.01); repeatable")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once, in separate processes; 2 on a 2-core CPU with the quick "
                             "budget (default: 1)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the budget's, cpu "
                                                      "for quick, auto for paper)")
    parser.add_argument("--out", default="runs/reproduce", help="output root (default: runs/reproduce)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        raise SystemExit(f"error: --seeds and --jobs: expected positive counts, got {args.seeds}, {args.jobs}")
    budget = BUDGETS[args.budget]
    base = {**budget.settings, **parse_sets(args.sets, args.tune)}
    gcn = parse_sets(args.gcn_sets, args.tune, flag="--gcn_set")
    device = train.pick_device(args.device or budget.device, no_cuda=False)
    datasets = resolve_data(args.data or budget.data)
    seeds = range(args.seeds)
    rows = grid_rows(args.groups, args.tune)
    runs = unique_runs(rows)
    tune_jobs = tuning_jobs(rows, args.budget) if args.tune else []
    grid_jobs = [Job(f"{row.run}/seed{s}", row, s) for s in seeds for row in runs]
    root = Path(args.out)
    pending = sum(not (root / name / job.path / "results.json").is_file()
                  for name in datasets for job in tune_jobs + grid_jobs)
    total = len(datasets) * len(tune_jobs + grid_jobs)
    print(f"{total} runs on {', '.join(datasets)} ({args.budget} budget, {args.seeds} seeds, {device}); "
          f"{total - pending} finished before, {pending} to train")
    failures, reports = [], []
    with tqdm(total=pending, desc="reproduce", unit="run", dynamic_ncols=True) as bar:
        for name, data in datasets.items():
            out = root / name
            tuned: dict = {}
            for phase, jobs in (("tune", tune_jobs), ("grid", grid_jobs)):
                todo = []
                trials = {_key(make_config(data, job, base, tuned, gcn)): out / job.path for job in tune_jobs}
                for job in jobs:
                    run_dir = out / job.path
                    cfg = make_config(data, job, base, tuned, gcn)
                    trial = trials.get(_key(cfg)) if phase == "grid" else None
                    if (run_dir / "results.json").is_file():
                        check_same_config(run_dir, cfg)
                    elif trial is not None and (trial / "results.json").is_file():
                        shutil.copytree(trial, run_dir, dirs_exist_ok=True)   # the winning trial is this run
                        tqdm.write(f"{name}/{job.path:<50s} = {trial.relative_to(out)}")
                        bar.update(1)
                    else:
                        todo.append((f"{name}/{job.path}", run_dir, cfg))
                for label, run_dir, results, seconds in run_all(todo, device, args.jobs):
                    if isinstance(results, str):
                        failures.append(f"{label}: {results}")
                        tqdm.write(f"FAILED {label}: {results} (log: {run_dir / 'train.log'})")
                    else:
                        tqdm.write(f"{label:<50s} val R@10 {results['val']['recall@10']:.4f}  "
                                   f"test R@10 {results['test']['recall@10']:.4f}  "
                                   f"epoch {results['best_epoch']:3d}  {seconds:5.0f}s")
                    bar.set_postfix_str(label, refresh=False)
                    bar.update(1)
                if phase == "tune" and jobs:
                    tuned = choose(out, jobs, args.budget)
            note = (f"Budget `{args.budget}`, seeds {', '.join(map(str, seeds))}, "
                    f"{'tuned l_r × weight_decay' if args.tune else 'Config defaults'}, "
                    f"settings {json.dumps(base)}{f', GCN-PHR also {json.dumps(gcn)}' if gcn else ''}; "
                    "test metrics at each run's best validation epoch, "
                    "mean ± sample std over seeds.\n")
            reports.append(report(out, name, rows, seeds, note, tuned))
    for path in reports:
        print(f"report: {path}")
    if failures:
        print("failed runs:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
