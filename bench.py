"""Benchmark of loading, training and evaluation at a given scale (the performance targets of the README).

Measures, in one run and side by side:

- loading the dataset in the project format (memory-mapped features; ``data_load.load_dataset``) and
  materialising the contiguous float32 feature matrix (``Dataset.features``);
- the training step of ``gcn_phr`` and ``released`` (models built by ``train.build_model``; median over
  ``--steps`` steps after warm-up; the step of ``train.py``: loss, backward, Adam, with ``--amp`` under
  bf16 autocast), the projected epoch, and — interleaved with those steps,
  so both see the same machine — the step's dense products alone: the video feature projection
  ``LReLU(W_f f_v + b_f)`` of every video, forward and backward. ``step ÷ dense`` is the share of a
  step that is not that arithmetic;
- evaluation of the whole test split (``cat`` scoring, SPEC §5): the propagation done once, the
  ranking of every line, lines per second; and a reference that ranks one line at a time with a
  Python loop over lines, as the release did (on a sample of ``--ref_lines`` lines), with the speedup;
- peak resident memory of training and of evaluation, each in a fresh subprocess (``VmHWM``), and
  its ratio to the size of the feature matrix;
- the device, the torch and torch-geometric versions, the thread count and the load average.

Usage::

    python bench.py                                   # the 'yfcc' preset (built under data/ once)
    python bench.py yfcc --threads 2 --out bench.json
    python bench.py --data_path data/mine --device cuda --amp
    python bench.py tiny --steps 10 --model gcn_phr   # seconds
    python bench.py instagram --model gcn_phr --train_flags "--norm pair --hide_own videos --neg_per_row 0"

Prints a table and writes the figures as JSON (``--out``). Timings on a shared machine are noisy:
medians are reported with every run, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_geometric

import evaluation
import make_data
import train
from data_load import Dataset, load_dataset, write_json_atomic
from gcn_layers import NEGATIVE_SLOPE
from model import Config

MODELS = ("gcn_phr", "released")
TARGETS = {  # the README's targets at the 'yfcc' preset on a 2-core CPU
    "step_over_dense": 2.5, "eval_seconds": 3.0, "eval_speedup": 100.0, "train_memory_ratio": 2.5,
    "load_seconds": 5.0,
}


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    """Seconds taken by ``fn()`` (the device synchronised before and after), and its result."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def summary(runs: list[float]) -> dict:
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs),
            "runs": [round(r, 4) for r in runs]}


def peak_rss_bytes() -> int:
    """Peak resident set of this process: ``VmHWM`` (Linux), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# --------------------------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------------------------
def bench_load(path: Path, repeats: int) -> tuple[dict, Dataset]:
    runs, ds = [], None
    for _ in range(repeats):
        ds = None  # the previous copy is released before the next load
        start = time.perf_counter()
        ds = load_dataset(path)
        runs.append(time.perf_counter() - start)
    return summary(runs), ds


def _raise(message: str):
    raise ValueError(message)


def train_config(args, name: str) -> Config:
    """The ``Config`` of a timed training step: ``train.py``'s flags given in ``--train_flags`` (the faithful
    defaults otherwise), then the model, batch size and autocast of the bench."""
    parser = train.build_parser()
    parser.error = _raise                                         # a bad flag is a ValueError, not an exit
    flags = parser.parse_args(shlex.split(args.train_flags))
    cfg = replace(train.config_from_args(flags), model_name=name, batch_size=args.batch_size, amp=args.amp)
    cfg.validate()
    return cfg


def make_step(cfg: Config, ds: Dataset, device: torch.device):
    """The model, built as ``train.py`` builds it, and a function running one training step of ``train.py``
    on the next batch."""
    torch.manual_seed(cfg.seed)
    model = train.build_model(cfg, ds).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.l_r, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = train.NegativeSampler(ds.train, ds.num_hashtag, cfg.neg_pop_share, gen, cfg.neg_per_row,
                                    cfg.neg_user_share, ds.graph)
    if cfg.neg_per_row:                                           # [R] or [R, K], drawn as train.py draws them
        sample_s, neg = timed(sampler.sample, torch.device("cpu"))
    else:                                                         # [R, 0]: every hashtag (Config.neg_per_row)
        sample_s, neg = 0.0, torch.empty(len(ds.train), 0, dtype=torch.long)
    neg = neg.to(device)
    order = torch.randperm(len(ds.train), generator=gen).to(device)
    batches = order.split(cfg.batch_size)
    train_rows = ds.train.to(device)
    state = {"next": 0}

    def step() -> float:
        rows = batches[state["next"] % len(batches)]
        state["next"] += 1
        users, videos, pos = train_rows[rows].unbind(1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            loss = model.loss(users, videos, pos, neg[rows], rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return model, step, len(batches), sample_s


def make_dense(features: torch.Tensor, dim: int, device: torch.device, amp: bool):
    """The step's dense products alone: z = LReLU(W_f f + b_f) for every video, forward and backward."""
    proj = torch.nn.Linear(features.size(1), dim).to(device)
    grad = torch.randn(features.size(0), dim, device=device)

    def dense() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            z = F.leaky_relu(proj(features), NEGATIVE_SLOPE)  # [V, d]
        z.backward(grad.to(z.dtype))
        proj.zero_grad(set_to_none=True)

    return dense


def bench_training(cfg: Config, args, ds: Dataset, features: torch.Tensor, device: torch.device) -> dict:
    model, step, steps_per_epoch, sample_s = make_step(cfg, ds, device)
    dense = make_dense(features, cfg.dim_latent, device, args.amp)
    for _ in range(args.warmup):
        step()
        dense()
    step_runs, dense_runs = [], []
    for _ in range(args.steps):  # interleaved: both see the same machine
        step_runs.append(timed(step, device)[0])
        dense_runs.append(timed(dense, device)[0])
    step_s, dense_s = statistics.median(step_runs), statistics.median(dense_runs)
    out = {"step_s": summary(step_runs), "dense_s": summary(dense_runs), "step_over_dense": step_s / dense_s,
           "steps_per_epoch": steps_per_epoch, "negatives_s": sample_s,
           "epoch_train_s": steps_per_epoch * step_s + sample_s,
           "config": {f.name: getattr(cfg, f.name) for f in fields(Config)     # what differs from the defaults
                      if getattr(cfg, f.name) != f.default}}
    del model
    return out


def reference_rank(model, features: torch.Tensor, split, lines: torch.Tensor, k: int,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """The release's evaluation (``accuracy`` in its ``model.py``): a Python loop over lines. Per line: the
    candidate lists become tensors, the line's video is projected, the negatives and the positives are
    scored with the full scoring MLP on ``[h ‖ u]``, the top ``k`` are taken, hits are counted with Python
    sets and NDCG (here with log2, as SPEC §5 defines it) with a loop over the positives. The propagation
    is done once beforehand, as in the release. Returns precision, recall and NDCG at ``k`` per line."""
    reps = model.propagate()
    out = {f"precision@{k}": [], f"recall@{k}": [], f"ndcg@{k}": []}
    for i in lines.tolist():
        negatives = split.negatives[i].tolist()
        positives = split.pos[split.pos_ptr[i]:split.pos_ptr[i + 1]].tolist()
        user = reps.user[split.users[i]]  # [d]
        video = F.leaky_relu(model.video_proj(features[split.videos[i]]), NEGATIVE_SLOPE)  # [d]
        scores = []
        for tags in (negatives, positives):
            tags = torch.tensor(tags, dtype=torch.long, device=device)
            scores.append(model.scoring(user.expand(len(tags), -1), video.expand(len(tags), -1),
                                        reps.tag[tags]))  # [n]
        top = torch.topk(torch.cat(scores), k).indices.tolist()
        hits = len(set(top) - set(range(len(negatives))))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(positives), k)))
        dcg = 0.0
        for j in range(len(positives)):
            if len(negatives) + j in top:
                dcg += 1 / math.log2(top.index(len(negatives) + j) + 2)
        out[f"precision@{k}"].append(hits / k)
        out[f"recall@{k}"].append(hits / len(positives))
        out[f"ndcg@{k}"].append(dcg / idcg)
    return {name: torch.tensor(values) for name, values in out.items()}


def bench_eval(args, ds: Dataset, features: torch.Tensor, device: torch.device) -> dict:
    cfg = Config(model_name="gcn_phr", eval_batch_size=args.eval_batch_size)
    ks = cfg.ks
    torch.manual_seed(cfg.seed)
    model = train.build_model(cfg, ds).to(device).eval()
    split = ds.test
    with torch.no_grad():
        timed(model.scorer, device)  # warm-up
        propagate_s, score_fn = timed(model.scorer, device)
        rank_s, result = timed(lambda: evaluation.evaluate(split, score_fn, ks=ks, batch_size=cfg.eval_batch_size,
                                                           device=device, per_line=True), device)
        gen = torch.Generator().manual_seed(0)
        sample = torch.randperm(len(split), generator=gen)[: min(args.ref_lines, len(split))].sort().values
        ref_s, ref = timed(lambda: reference_rank(model, features, split, sample, max(ks), device), device)
    agree = max(float((ref[name] - result["per_line"][name][sample]).abs().max()) for name in ref)
    lines = len(split)
    total_s = propagate_s + rank_s
    return {"lines": lines, "propagate_s": propagate_s, "rank_s": rank_s, "total_s": total_s,
            "lines_per_s": lines / total_s, "rank_lines_per_s": lines / rank_s,
            "reference_lines": int(sample.numel()), "reference_s": ref_s,
            "reference_lines_per_s": sample.numel() / ref_s,
            "speedup": (lines / total_s) / (sample.numel() / ref_s),
            "reference_max_abs_diff": agree, "recall@10": result["recall@10"]}


def measure_peak(mode: str, args, data: Path) -> dict:
    """Peak memory of training (``--steps`` steps of gcn_phr) or evaluation (the test split), each in a
    fresh Python process so neither sees the other's high-water mark."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--data_path", str(data), "--device", args.device,
           "--batch_size", str(args.batch_size), "--eval_batch_size", str(args.eval_batch_size),
           "--steps", str(min(args.steps, 3)), "--train_flags", args.train_flags, "--peak", mode]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.amp:
        cmd.append("--amp")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.py --peak {mode} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_peak(mode: str, args, data: Path, device: torch.device) -> None:
    """The body of a ``--peak`` subprocess: do the work, print one JSON line."""
    ds = load_dataset(data)
    if mode == "train":
        _, step, _, _ = make_step(train_config(args, "gcn_phr"), ds, device)
        for _ in range(args.steps):
            step()
    else:
        cfg = Config(model_name="gcn_phr", eval_batch_size=args.eval_batch_size)
        model = train.build_model(cfg, ds).to(device).eval()
        with torch.no_grad():
            evaluation.evaluate(ds.test, model.scorer(), ks=cfg.ks, batch_size=cfg.eval_batch_size, device=device)
    out = {"peak_rss_bytes": peak_rss_bytes()}
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    print(json.dumps(out))


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def targets(report: dict) -> dict:
    """Each target of the README with the measured value and whether it is met."""
    out = {}
    gcn, rel = report["train"].get("gcn_phr"), report["train"].get("released")
    if gcn:
        out["step_over_dense"] = {"value": gcn["step_over_dense"], "limit": TARGETS["step_over_dense"],
                                  "met": gcn["step_over_dense"] <= TARGETS["step_over_dense"]}
    if gcn and rel:
        out["gcn_phr_vs_released"] = {"value": gcn["step_s"]["median"] / rel["step_s"]["median"], "limit": 1.0,
                                      "met": gcn["step_s"]["median"] <= rel["step_s"]["median"]}
    if "eval" in report:
        ev = report["eval"]
        out["eval_seconds"] = {"value": ev["total_s"], "limit": TARGETS["eval_seconds"],
                               "met": ev["total_s"] < TARGETS["eval_seconds"]}
        out["eval_speedup"] = {"value": ev["speedup"], "limit": TARGETS["eval_speedup"],
                               "met": ev["speedup"] >= TARGETS["eval_speedup"]}
    if "memory" in report:
        ratio = report["memory"]["train_ratio"]
        out["train_memory_ratio"] = {"value": ratio, "limit": TARGETS["train_memory_ratio"],
                                     "met": ratio <= TARGETS["train_memory_ratio"]}
    load_s = report["load"]["seconds"]["median"]
    out["load_seconds"] = {"value": load_s, "limit": TARGETS["load_seconds"], "met": load_s < TARGETS["load_seconds"]}
    return out


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def format_report(report: dict) -> str:
    env, ds = report["env"], report["dataset"]
    lines = [f"bench: {ds['name']} ({ds['num_user']} users, {ds['num_hashtag']} hashtags, {ds['num_video']} videos, "
             f"{ds['train_rows']} training rows, {ds['test_lines']} test lines, F={ds['feature_dim']})",
             f"device {env['device']}, torch {env['torch']}, torch-geometric {env['torch_geometric']}, "
             f"{env['threads']} threads, load average {env['loadavg_start']:.2f} → {env['loadavg_end']:.2f}", ""]
    rows = [("load dataset (project format, memory-mapped)", fmt_s(report["load"]["seconds"]["median"])),
            ("features() → contiguous float32 [V, F]", fmt_s(report["load"]["features_s"]))]
    for name, t in report["train"].items():
        rows += [(f"{name}: training step (median of {len(t['step_s']['runs'])})",
                  f"{fmt_s(t['step_s']['median'])}  [{fmt_s(t['step_s']['min'])} – {fmt_s(t['step_s']['max'])}]"),
                 (f"{name}: dense products alone (projection fwd+bwd)", fmt_s(t["dense_s"]["median"])),
                 (f"{name}: step ÷ dense", f"{t['step_over_dense']:.2f}"),
                 (f"{name}: epoch ({t['steps_per_epoch']} steps + negatives)", fmt_s(t["epoch_train_s"]))]
    if "eval" in report:
        ev = report["eval"]
        rows += [("evaluation: propagation (once)", fmt_s(ev["propagate_s"])),
                 (f"evaluation: rank {ev['lines']} test lines", fmt_s(ev["rank_s"])),
                 ("evaluation: total, lines/s", f"{fmt_s(ev['total_s'])}, {ev['lines_per_s']:.0f} lines/s"),
                 (f"reference one line at a time ({ev['reference_lines']} lines)",
                  f"{ev['reference_lines_per_s']:.1f} lines/s"),
                 ("speedup", f"{ev['speedup']:.0f}×")]
    if "memory" in report:
        mem = report["memory"]
        gib = 2.0 ** 30
        rows += [("feature matrix", f"{mem['feature_bytes'] / gib:.2f} GiB"),
                 ("peak memory, training", f"{mem['train_peak_bytes'] / gib:.2f} GiB ({mem['train_ratio']:.2f}×)"),
                 ("peak memory, evaluation", f"{mem['eval_peak_bytes'] / gib:.2f} GiB ({mem['eval_ratio']:.2f}×)")]
    width = max(len(r[0]) for r in rows)
    lines += [f"{label:<{width}}  {value}" for label, value in rows]
    lines += ["", "targets:"]
    for name, t in report["targets"].items():
        lines.append(f"  {name:<20} {t['value']:.3g} (limit {t['limit']:g})  {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)


def resolve_data(args) -> Path:
    if args.data_path:
        return Path(args.data_path)
    if args.dataset in make_data.PRESETS:
        return make_data.ensure(args.dataset, root=args.root, seed=0)
    return Path(args.dataset)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Benchmark loading, training and evaluation (README targets).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("dataset", nargs="?", default="yfcc",
                        help=f"a preset ({', '.join(make_data.PRESETS)}; built under --root once) or a dataset "
                             "directory")
    parser.add_argument("--data_path", default="", help="a dataset directory (overrides the positional argument)")
    parser.add_argument("--root", default="data", help="where presets are built")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per model (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--model", default=",".join(MODELS), help="comma-separated models to time")
    parser.add_argument("--batch_size", type=int, default=Config.batch_size, help="training rows per step")
    parser.add_argument("--eval_batch_size", type=int, default=Config.eval_batch_size, help="lines scored at once")
    parser.add_argument("--ref_lines", type=int, default=200, help="lines ranked by the one-line-at-a-time reference")
    parser.add_argument("--load_repeats", type=int, default=3, help="dataset loads timed (median)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast of the training step (Config.amp)")
    parser.add_argument("--train_flags", default="", metavar="FLAGS",
                        help="train.py flags of the timed training steps, in one quoted string, e.g. "
                             "\"--norm pair --hide_own videos --neg_per_row 0\" (default: the paper's setting)")
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--out", default="bench.json", help="JSON output ('' for none)")
    parser.add_argument("--peak", choices=("train", "eval"), help=argparse.SUPPRESS)
    return parser


def publish(text: str, report: dict, out: str | None) -> int:
    """Print a benchmark's table and, with ``out``, write its JSON report atomically; the exit status."""
    print(text)
    if out:
        write_json_atomic(out, report)
        print(f"\nwritten: {out}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: CUDA is not available on this machine", file=sys.stderr)
        return 2
    models = [m for m in args.model.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or args.steps < 1:
        print(f"error: --model expects names among {MODELS} and --steps ≥ 1, got {args.model!r}, {args.steps}",
              file=sys.stderr)
        return 2
    try:
        configs = {name: train_config(args, name) for name in (models if not args.peak else ("gcn_phr",))}
    except ValueError as err:
        print(f"error: --train_flags {args.train_flags!r}: {err}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    data = resolve_data(args)
    if args.peak:
        run_peak(args.peak, args, data, device)
        return 0

    report = {"command": " ".join(["python", "bench.py", *(sys.argv[1:] if argv is None else argv)])}
    loadavg_start = os.getloadavg()[0]
    load, ds = bench_load(data, args.load_repeats)
    features_s, features = timed(ds.features, torch.device("cpu"))
    features = features.to(device)
    report["load"] = {"seconds": load, "features_s": features_s}
    feature_bytes = features.numel() * features.element_size()
    report["dataset"] = {"path": str(data), "name": data.name, "num_user": ds.num_user, "num_hashtag": ds.num_hashtag,
                         "num_video": ds.num_video, "train_rows": len(ds.train), "val_lines": len(ds.val),
                         "test_lines": len(ds.test), "feature_dim": ds.feature_dim, "feature_bytes": feature_bytes}
    report["train_flags"] = args.train_flags
    report["train"] = {name: bench_training(cfg, args, ds, features, device) for name, cfg in configs.items()}
    if "gcn_phr" in models:
        report["eval"] = bench_eval(args, ds, features, device)
    del features
    if not args.no_memory:
        train_peak = measure_peak("train", args, data)
        eval_peak = measure_peak("eval", args, data)
        report["memory"] = {"feature_bytes": feature_bytes,
                            "train_peak_bytes": train_peak["peak_rss_bytes"],
                            "train_ratio": train_peak["peak_rss_bytes"] / feature_bytes,
                            "eval_peak_bytes": eval_peak["peak_rss_bytes"],
                            "eval_ratio": eval_peak["peak_rss_bytes"] / feature_bytes,
                            "cuda": {k: v["cuda_peak_bytes"] for k, v in (("train", train_peak), ("eval", eval_peak))
                                     if "cuda_peak_bytes" in v}}
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report["env"] = {"device": f"{device} ({device_name})" if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "torch_geometric": torch_geometric.__version__,
                     "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "amp": args.amp,
                     "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg()[0]}
    report["targets"] = targets(report)
    return publish(format_report(report), report, args.out)


if __name__ == "__main__":
    sys.exit(main())
