"""Train and evaluate GCN-PHR, the release's variant or a baseline (SPEC §3 training, §5 evaluation, §7 command line).

``python train.py`` with no flags builds (once, under ``data/``) the synthetic ``small`` preset, trains
GCN-PHR on it with the release's hyperparameters, and prints one line per epoch and a final test table.
The release's command line is accepted as is::

    python train.py --l_r=0.001 --weight_decay=0.1 --batch_size=1024 --dim_latent=64 --num_workers=30 \\
        --aggr_mode='mean' --scoring_mode='cat'

A run directory (``--out``, default ``runs/<model>-<dataset>-s<seed>-<time>``) receives ``config.json``,
``metrics.csv`` (one row per epoch), ``best.pt`` (the best-validation weights), ``test_per_line.npz``
(every test line's metrics there, for paired significance tests) and ``results.json`` (test metrics at
the best validation epoch, seed, time taken).

Shape legend: R training rows, B batch, H hashtags, V videos, d latent dim.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

import evaluation
from baselines import PAPER_BASELINES, ContentModel, MatrixFactorization, Popularity, UserPopularity
from data_load import DataError, Dataset, load_dataset, write_json_atomic
from model import GCNPHR, Config, HomogeneousGCN, Ranker, ReleasedGCN

DEFAULT_PRESET = "small"


# --------------------------------------------------------------------------------------------
# Command line, generated from the Config dataclass
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train GCN-PHR (ACM MM 2019) or a reference ranker and report test metrics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in fields(Config):
        default = f.default if f.default is not MISSING else None
        kw = {"help": f.metadata.get("help", ""), "default": default}
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        if f.type in ("bool", bool):
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, **kw)
        else:
            kw["type"] = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(f"--{f.name}", **kw)
    parser.add_argument("--out", default="", help="run directory (default: runs/<model>-<data>-s<seed>-<time>)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into an existing --out")
    parser.add_argument("--allow_pickle", action="store_true",
                        help="allow reading a legacy (pickled) dataset: unpickling runs code, trusted files only")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--no-cuda", dest="no_cuda", action="store_true", help="never use CUDA")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    cfg = Config(**{f.name: getattr(args, f.name) for f in fields(Config)})
    cfg.validate()
    return cfg


def pick_device(request: str, no_cuda: bool) -> torch.device:
    if no_cuda or request == "cpu":
        return torch.device("cpu")
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if request.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {request}: CUDA is not available on this machine "
                         "(use --device auto or cpu)")
    return torch.device(request)


# --------------------------------------------------------------------------------------------
# Models and negatives
# --------------------------------------------------------------------------------------------
def build_model(cfg: Config, ds: Dataset, features: Tensor | None = None) -> Ranker:
    """The ranker named by ``cfg.model_name``; ``features`` [V, F] defaults to the dataset's."""
    name = cfg.model_name
    if name == "pop":
        return Popularity(ds.train, ds.num_hashtag)
    if name == "userpop":
        return UserPopularity(ds.train, ds.graph)
    if name == "mf":
        return MatrixFactorization(cfg, ds.num_user, ds.num_hashtag)
    if name == "gcn_phr" and cfg.graph == "pairs" and features is None:
        order = GCNPHR.graph_videos_first(ds.graph)  # feature rows of the training graph's videos first:
        return GCNPHR(cfg, ds.graph, ds.features(order), video_order=order)  # a step projects only those
    features = ds.features() if features is None else features
    if name == "content":
        return ContentModel(cfg, features, ds.num_hashtag)
    if name in PAPER_BASELINES:
        return PAPER_BASELINES[name](cfg, ds.train, features, num_user=ds.num_user, num_hashtag=ds.num_hashtag)
    if name == "gcn_phr" and cfg.graph == "homogeneous":
        return HomogeneousGCN(cfg, ds.graph, features)
    cls = {"gcn_phr": GCNPHR, "released": ReleasedGCN}[name]
    return cls(cfg, ds.graph, features)


class NegativeSampler:
    """One negative hashtag per training row (SPEC §3), redrawn each call, vectorised.

    Drawn from the hashtags seen in training, a share ``pop_share`` of them in proportion to popularity
    and the rest uniformly (``pop_share = 0`` is the paper's uniform draw), excluding the hashtags of the
    row's own video (rejection, redrawing only the rejected entries).
    """

    def __init__(self, train: Tensor, num_hashtag: int, pop_share: float, generator: torch.Generator):
        count = torch.bincount(train[:, 2], minlength=num_hashtag).double()       # [H]
        seen = (count > 0).double()
        self.prob = (1 - pop_share) * seen / seen.sum() + pop_share * count / count.sum()   # [H]
        self.num_hashtag = num_hashtag
        self.videos = train[:, 1]
        self.own = torch.unique(train[:, 1] * num_hashtag + train[:, 2])         # sorted (video, tag) keys
        self.gen = generator

    def _draw(self, n: int) -> Tensor:
        return torch.multinomial(self.prob, n, replacement=True, generator=self.gen)

    def sample(self) -> Tensor:
        neg = self._draw(self.videos.numel())                                     # [R]
        todo = torch.arange(neg.numel())
        for _ in range(100):
            clash = torch.isin(self.videos[todo] * self.num_hashtag + neg[todo], self.own)
            todo = todo[clash]
            if todo.numel() == 0:
                return neg
            neg[todo] = self._draw(todo.numel())
        raise RuntimeError("could not draw negatives: a training video carries nearly every hashtag")


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def resolve_data(cfg: Config) -> Path:
    if cfg.data_path:
        return Path(cfg.data_path)
    import make_data
    return make_data.ensure(DEFAULT_PRESET, root="data", seed=0)


def default_run_dir(cfg: Config, data: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model_name}-{data.name}-s{cfg.seed}-{stamp}"


def run(cfg: Config, out: Path, device: torch.device, allow_pickle: bool = False,
        progress: bool = True, log=print) -> dict:
    """Train ``cfg.model_name``, keep the best validation epoch, evaluate test there once."""
    start = time.time()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, min(cfg.num_workers, os.cpu_count() or 1)))
    data = resolve_data(cfg)
    ds = load_dataset(data, allow_pickle=allow_pickle)
    log(f"data    {ds}")
    model = build_model(cfg, ds).to(device)
    if cfg.PATH_weight_load:
        load_weights(model, cfg.PATH_weight_load)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", {**asdict(cfg), "data": str(data), "device": str(device)})
    ks = cfg.ks
    evaluate = lambda split: evaluation.evaluate(split, model.scorer(), ks=ks,
                                                 batch_size=cfg.eval_batch_size, device=device)
    metrics_path = out / "metrics.csv"
    names = [f"{m}@{k}" for m in evaluation.METRICS for k in ks]
    with open(metrics_path, "w", newline="") as fh:
        csv.writer(fh).writerow(["epoch", "loss", *[f"val_{n}" for n in names], "seconds"])

    best = {"epoch": 0, "recall@10": -1.0}
    if model.trainable:
        gen = torch.Generator().manual_seed(cfg.seed)
        sampler = NegativeSampler(ds.train, ds.num_hashtag, cfg.neg_pop_share, gen)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.l_r, weight_decay=cfg.weight_decay)
        train_rows = ds.train.to(device)
        epochs, stale = cfg.num_epoch, 0
    else:
        epochs = 0
        with torch.no_grad():
            model.eval()
            val = evaluate(ds.val)
        log(f"epoch   0  (nothing to train)  val R@10 {val['recall@10']:.4f}")
        best = {"epoch": 0, "recall@10": val["recall@10"], "val": val}
        save_weights(model, cfg, out / "best.pt", epoch=0)

    for epoch in range(1, epochs + 1):
        t0 = time.time()
        model.train()
        neg = sampler.sample().to(device)                                        # [R]
        order = torch.randperm(len(ds.train), generator=gen).to(device)          # [R]
        total = 0.0
        batches = order.split(cfg.batch_size)
        for rows in tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not progress):
            users, videos, pos = train_rows[rows].unbind(1)                      # [B] each
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                loss = model.loss(users, videos, pos, neg[rows], rows)
            if not torch.isfinite(loss):
                raise SystemExit(f"error: epoch {epoch}: the loss is {loss.item()}; stopping "
                                 f"(the best checkpoint so far stays in {out})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        model.eval()
        with torch.no_grad():
            val = evaluate(ds.val)
        seconds = time.time() - t0
        mean_loss = total / len(ds.train)
        with open(metrics_path, "a", newline="") as fh:
            csv.writer(fh).writerow([epoch, f"{mean_loss:.6f}", *[f"{val[n]:.6f}" for n in names],
                                     f"{seconds:.2f}"])
        improved = val["recall@10"] > best["recall@10"]
        log(f"epoch {epoch:3d}  loss {mean_loss:.4f}  val P@10 {val['precision@10']:.4f}  "
            f"R@10 {val['recall@10']:.4f}  NDCG@10 {val['ndcg@10']:.4f}  {seconds:.1f}s"
            + ("  *" if improved else ""))
        if improved:
            best, stale = {"epoch": epoch, "recall@10": val["recall@10"], "val": val}, 0
            save_weights(model, cfg, out / "best.pt", epoch=epoch)
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                log(f"early stop: no better validation Recall@10 for {cfg.patience} epochs")
                break

    load_weights(model, out / "best.pt")
    model.eval()
    with torch.no_grad():
        test = evaluation.evaluate(ds.test, model.scorer(), ks=ks, batch_size=cfg.eval_batch_size, device=device,
                                   per_line=True)
    np.savez(out / "test_per_line.npz", **{name: v.numpy() for name, v in test.pop("per_line").items()})
    if cfg.PATH_weight_save:
        save_weights(model, cfg, Path(cfg.PATH_weight_save), epoch=best["epoch"])
    results = {"model_name": cfg.model_name, "data": str(data), "seed": cfg.seed,
               "best_epoch": best["epoch"], "val": best["val"], "test": test,
               "seconds": round(time.time() - start, 2), "device": str(device),
               "generator": ds.meta.get("generator")}
    write_json_atomic(out / "results.json", results)
    log(f"test at best validation epoch {best['epoch']} ({cfg.model_name}, seed {cfg.seed}):")
    log(evaluation.format_table(test, ks))
    return results


def save_weights(model: Ranker, cfg: Config, path: Path, epoch: int) -> None:
    """Atomic checkpoint: a temporary file in the same directory, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"model": model.state_dict(), "config": asdict(cfg), "epoch": epoch}, tmp)
    os.replace(tmp, path)


def load_weights(model: Ranker, path) -> int:
    """Load weights saved by :func:`save_weights` (``weights_only=True``: no code runs)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: no such checkpoint") from None
    except Exception as err:  # noqa: BLE001 — anything unreadable is reported in one line
        raise SystemExit(f"error: {path}: not a readable checkpoint ({str(err).splitlines()[0]})") from None
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise SystemExit(f"error: {path}: expected a checkpoint written by train.py")
    own = model.state_dict()
    for name, tensor in state.items():
        if name not in own:
            raise SystemExit(f"error: {path}: tensor {name!r} does not belong to a "
                             f"{type(model).__name__} model")
        if own[name].shape != tensor.shape:
            raise SystemExit(f"error: {path}: tensor {name!r} has shape {tuple(tensor.shape)}, this "
                             f"model and dataset need {tuple(own[name].shape)}")
    missing = sorted(set(own) - set(state))
    if missing:
        raise SystemExit(f"error: {path}: missing tensors {missing[:3]}")
    model.load_state_dict(state)
    return int(ckpt.get("epoch", 0))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = pick_device(args.device, args.no_cuda)
    data = Path(cfg.data_path) if cfg.data_path else Path("data") / DEFAULT_PRESET
    out = Path(args.out) if args.out else default_run_dir(cfg, data)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"error: {out}: the run directory exists (pass --overwrite or another --out)", file=sys.stderr)
        return 2
    try:
        run(cfg, out, device, allow_pickle=args.allow_pickle, progress=not args.quiet)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run directory: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
