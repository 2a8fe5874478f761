"""Scaling measurements: full-graph against sampled-subgraph training (``--num_neigh``) as the graph grows.

Builds synthetic datasets at several multiples of the ``yfcc`` preset (``make_data.py --scale S``: users,
hashtags, videos and topics all multiplied by S, so the graph grows by S with the same local structure)
and measures, for full-graph training and for each ``--num_neigh K``, on the CPU:

- the training step of ``train.py`` (``bench.make_step``: loss, backward, Adam), median over ``--steps``
  steps after ``--warmup`` untimed ones, and the projected epoch (steps per epoch × median step + the
  epoch's negatives);
- the peak resident memory of the whole process (``VmHWM``: loading the dataset, building the model,
  the steps);
- for sampled training, the mean size of a step's subgraph (videos projected, pairs visited).

Every measurement runs in a fresh subprocess (``--measure``), so none sees another's memory. A full-graph
measurement whose projected peak (from the smaller scales' measured memory per video) would not fit in
the memory available is not run; its projection is reported instead, marked as such.

Usage::

    python scale.py                                   # 1×, 4×, 16× yfcc; F = 284 (256,16,12); K = 10
    python scale.py --scales 1,4 --neigh 5,10 --steps 5 --out scale.json
    python scale.py --measure data/scale/yfcc-x1-f284-n100 --num_neigh 10   # one measurement, one JSON line

The datasets use a smaller feature dimension than the paper's 2,276 (the same at every scale; the
``yfcc`` features alone are 1.2 GB at 1×, 20 GB at 16×) and 100 negatives per val/test line (they play no
part in training); ``--feature_dims`` and ``--num_neg`` change both. ``--real DIR`` adds the measurement on
a dataset with the paper's dimensions (e.g. ``data/yfcc``), which calibrates the projection of memory
to 2,276 dimensions: one more float32 copy of the features per video.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import bench
import make_data
from data_load import load_dataset
from model import Config

PAPER_FEATURE_DIM = 2276
GIB = 2.0 ** 30


# --------------------------------------------------------------------------------------------
# One measurement (the body of a --measure subprocess)
# --------------------------------------------------------------------------------------------
def measure(data: Path, num_neigh: int, steps: int, warmup: int, batch_size: int) -> dict:
    """Load ``data``, build GCN-PHR as ``train.py`` does, time ``warmup + steps`` training steps; the figures."""
    start = time.perf_counter()
    ds = load_dataset(data)
    load_s = time.perf_counter() - start
    cfg = Config(num_neigh=num_neigh, batch_size=batch_size)
    start = time.perf_counter()
    model, step, steps_per_epoch, negatives_s = bench.make_step(cfg, ds, torch.device("cpu"))
    build_s = time.perf_counter() - start
    sizes = []                                              # (videos, pairs) of every sampled step
    if model.sampler is not None:
        sample = model.sampler.sample

        def recorded(*args, **kw):
            sub = sample(*args, **kw)
            sizes.append((sub.video_rows.numel(), sum(b.graph.num_pairs for b in sub.blocks)))
            return sub

        model.sampler.sample = recorded
    for _ in range(warmup):
        step()
    runs = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        runs.append(time.perf_counter() - start)
    step_s = statistics.median(runs)
    out = {"data": str(data), "num_neigh": num_neigh, "num_user": ds.num_user, "num_hashtag": ds.num_hashtag,
           "num_video": ds.num_video, "feature_dim": ds.feature_dim, "train_rows": len(ds.train),
           "pairs": ds.graph.num_pairs, "graph_videos": int(model.num_graph_rows),
           "feature_bytes": model.features.numel() * model.features.element_size(),
           "load_s": load_s, "build_s": build_s, "negatives_s": negatives_s, "steps_per_epoch": steps_per_epoch,
           "step_s": bench.summary(runs), "epoch_s": steps_per_epoch * step_s + negatives_s,
           "peak_rss_bytes": bench.peak_rss_bytes(), "threads": torch.get_num_threads()}
    if sizes:
        out["step_videos"] = statistics.mean(v for v, _ in sizes)
        out["step_pairs"] = statistics.mean(p for _, p in sizes)
    return out


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------
def available_bytes() -> int:
    """``MemAvailable`` of /proc/meminfo (what a new process may use without swapping)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def dataset_dir(args, scale: float) -> Path:
    return Path(args.root) / f"{args.preset}-x{scale:g}-f{sum(args.dims)}-n{args.num_neg}"


def ensure_dataset(args, scale: float) -> tuple[Path, dict | None]:
    """The dataset of ``scale``, built (in a subprocess, timed, with its peak memory) when missing."""
    out = dataset_dir(args, scale)
    if (out / "meta.json").is_file():
        return out, None
    cmd = [sys.executable, str(Path(__file__).with_name("make_data.py")), "--preset", args.preset,
           "--scale", f"{scale:g}", "--feature_dims", ",".join(map(str, args.dims)), "--num_neg", str(args.num_neg),
           "--no_references", "--out", str(out), "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: building {out} failed:\n{done.stderr[-2000:]}")
    peak = int(done.stderr.strip().splitlines()[-1]) * 1024  # /usr/bin/time's %M: KiB
    return out, {"seconds": time.perf_counter() - start, "peak_rss_bytes": peak}


def run_measure(args, data: Path, num_neigh: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", str(data), "--num_neigh", str(num_neigh),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch_size", str(args.batch_size),
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: scale.py --measure {data} --num_neigh {num_neigh} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def per_video_bytes(rows: list[dict]) -> tuple[float, float]:
    """Least-squares ``peak ≈ a + b · videos`` over the measured full-graph rows (one row: b = peak / videos)."""
    xs = [r["num_video"] for r in rows]
    ys = [r["peak_rss_bytes"] for r in rows]
    if len(rows) == 1:
        return 0.0, ys[0] / xs[0]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def paper_dims_peak(row: dict, dim: int) -> float:
    """The peak with the paper's 2,276 feature dimensions instead of ``dim``: one float32 copy of the
    features per video more (the training matrix; the projection's input is that matrix, its gradient is
    [d, F]), the rest unchanged."""
    return row["peak_rss_bytes"] + row["num_video"] * (PAPER_FEATURE_DIM - dim) * 4


def format_table(report: dict) -> str:
    dim = sum(report["feature_dims"])
    lines = ["| scale | users | hashtags | videos | pairs | training | step (median) | epoch (projected) | "
             "peak RSS | peak RSS at F = 2,276 | videos / pairs per step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        mode = "full graph" if row["num_neigh"] == 0 else f"`--num_neigh {row['num_neigh']}`"
        projected = row.get("projected", False)
        peak = f"{row['peak_rss_bytes'] / GIB:.2f} GiB" + (" *(projected)*" if projected else "")
        step = "—" if projected else f"{row['step_s']['median']:.3f} s"
        epoch = "—" if projected else f"{row['epoch_s'] / 60:.1f} min"
        real = row.get("peak_rss_paper_dims_bytes", paper_dims_peak(row, row["feature_dim"]))
        sizes = f"{row['step_videos']:,.0f} / {row['step_pairs']:,.0f}" if "step_videos" in row else "all"
        lines.append(f"| {row['label']} | {row['num_user']:,} | {row['num_hashtag']:,} | {row['num_video']:,} | "
                     f"{row['pairs']:,} | {mode} | {step} | {epoch} | {peak} | {real / GIB:.1f} GiB | {sizes} |")
    lines.append("")
    lines.append(f"F = {dim} feature dimensions at every scale unless marked; {report['threads']} thread(s); "
                 f"batch {report['batch_size']}; median of {report['steps']} steps after {report['warmup']}.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Full-graph vs sampled-subgraph training as the graph grows.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="yfcc", choices=sorted(make_data.PRESETS), help="the preset to scale")
    parser.add_argument("--scales", default="1,4,16", help="comma-separated multiples of the preset")
    parser.add_argument("--neigh", default="10", help="comma-separated --num_neigh values of the sampled runs")
    parser.add_argument("--feature_dims", default="256,16,12", help="feature dims VIS,AC,TXT at every scale")
    parser.add_argument("--num_neg", type=int, default=100, help="negatives per val/test line of the datasets")
    parser.add_argument("--root", default="data/scale", help="where the datasets are built")
    parser.add_argument("--real", default="", help="also measure this dataset (e.g. data/yfcc, F = 2,276) at 1×")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch_size", type=int, default=Config.batch_size, help="training rows per step")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of every measurement")
    parser.add_argument("--headroom", type=float, default=0.85,
                        help="run a full-graph measurement only if its projected peak is below this share of "
                             "MemAvailable")
    parser.add_argument("--out", default="scale.json", help="JSON output ('' for none)")
    parser.add_argument("--measure", default="", help=argparse.SUPPRESS)
    parser.add_argument("--num_neigh", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.num_neigh, args.steps, args.warmup, args.batch_size)))
        return 0
    try:
        scales = [float(s) for s in args.scales.split(",")]
        neighs = [int(k) for k in args.neigh.split(",") if k]
        args.dims = tuple(int(d) for d in args.feature_dims.split(","))
        if len(args.dims) != 3 or min(args.dims) < 1 or min(scales) <= 0 or min(neighs, default=1) < 1:
            raise ValueError
    except ValueError:
        print("error: expected --scales positive numbers, --neigh positive integers and --feature_dims three "
              "positive integers", file=sys.stderr)
        return 2
    report = {"command": " ".join(["python", "scale.py", *(sys.argv[1:] if argv is None else argv)]),
              "feature_dims": list(args.dims), "threads": args.threads, "batch_size": args.batch_size,
              "steps": args.steps, "warmup": args.warmup, "torch": torch.__version__, "builds": {}, "rows": []}
    targets = [(f"{s:g}×", s, None) for s in sorted(scales)]
    if args.real:
        targets.insert(0, ("1× (F = 2,276)", 1.0, Path(args.real)))
    full_rows: list[dict] = []
    for label, scale, real in targets:
        if real is None:
            data, build = ensure_dataset(args, scale)
            if build is not None:
                report["builds"][label] = build
                print(f"built {data} in {build['seconds']:.0f} s, peak {build['peak_rss_bytes'] / GIB:.2f} GiB",
                      flush=True)
        else:
            data = real
        ds_meta = json.loads((data / "meta.json").read_text())
        fits = True
        if full_rows and real is None:
            a, b = per_video_bytes(full_rows)
            projected = a + b * ds_meta["num_video"]
            fits = projected < args.headroom * available_bytes()
        for k in [0, *neighs]:
            if k == 0 and not fits:
                like = dict(full_rows[-1])
                ratio = ds_meta["num_video"] / like["num_video"]
                row = {**like, "projected": True, "num_user": ds_meta["num_user"],
                       "num_hashtag": ds_meta["num_hashtag"], "num_video": ds_meta["num_video"],
                       "pairs": round(like["pairs"] * ratio), "peak_rss_bytes": projected}
                for key in ("step_s", "epoch_s"):
                    row.pop(key, None)
            else:
                row = run_measure(args, data, k)
            row["label"] = label
            if real is not None:
                row["peak_rss_paper_dims_bytes"] = row["peak_rss_bytes"]
            elif k == 0 and not row.get("projected"):
                full_rows.append(row)
            report["rows"].append(row)
            done = "projected" if row.get("projected") else f"step {row['step_s']['median']:.3f} s"
            print(f"{label:>14}  K={k:<3} {done}  peak {row['peak_rss_bytes'] / GIB:.2f} GiB", flush=True)
    print()
    return bench.publish(format_table(report), report, args.out)


if __name__ == "__main__":
    sys.exit(main())
