"""Train and evaluate GCN-PHR, the release's variant or a baseline (SPEC §3 training, §5 evaluation, §7 command line).

``python train.py`` with no flags builds (once, under ``data/``) the synthetic ``small`` preset, trains
GCN-PHR on it with the release's hyperparameters, and prints one line per epoch and a final test table.
The release's command line is accepted as is::

    python train.py --l_r=0.001 --weight_decay=0.1 --batch_size=1024 --dim_latent=64 --num_workers=30 \\
        --aggr_mode='mean' --scoring_mode='cat'

A run directory (``--out``, default ``runs/<model>-<dataset>-s<seed>-<time>``) receives ``config.json``,
``metrics.csv`` (one row per epoch), ``last.pt`` (everything needed to resume, rewritten every epoch),
``best.pt`` (the best-validation weights), ``test_per_line.npz`` (every test line's metrics there, for
paired significance tests) and ``results.json`` (test metrics at the best validation epoch, seed, time
taken). Every file is written atomically (a temporary file in the same directory, flushed to disk, then
renamed), so a run killed at any moment leaves each file either complete or as it was;
``python train.py --resume RUN_DIR`` continues it from its last finished epoch, with the same result as a
run that was never interrupted (same device and thread count).

Data-parallel training (``ddp.py``): ``torchrun --nproc_per_node=N train.py …`` trains on N processes (one
GPU each with NCCL, or CPU processes with gloo), each taking its share of every global batch of
``--batch_size`` rows; rank 0 evaluates and writes the run directory.

Shape legend: R training rows, B batch, H hashtags, V videos, d latent dim.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

import ddp
import evaluation
from baselines import PAPER_BASELINES, ContentModel, MatrixFactorization, NeighbourVoting, Popularity, UserPopularity
from data_load import DataError, Dataset, PairGraph, load_dataset, write_json_atomic
from model import GCNPHR, Config, HomogeneousGCN, Ranker, ReleasedGCN, negative_distribution

DEFAULT_PRESET = "small"
LAST, BEST = "last.pt", "best.pt"
RUN_FILES = ("config.json", "metrics.csv", LAST, BEST, "test_per_line.npz", "results.json")  # train.py's own
CHECKPOINT_KEYS = ("format", "model", "config", "epoch", "optimizer", "finished", "best", "best_model", "stale",
                   "metrics", "rng", "data", "average")                         # of last.pt


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
    parser.add_argument("--resume", default="", metavar="RUN_DIR",
                        help="continue the interrupted run in RUN_DIR from its last.pt, with its config.json "
                             "(other settings may only repeat the saved ones)")
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
    """``auto``: CUDA when available, else the CPU, silently; an explicit device must exist (one-line error)."""
    if no_cuda or request == "cpu":
        return torch.device("cpu")
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(request)
    except RuntimeError:
        raise SystemExit(f"error: --device {request}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"error: --device {request}: CUDA is not available on this machine "
                             "(use --device auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SystemExit(f"error: --device {request}: expected a CUDA device index below "
                             f"{torch.cuda.device_count()} (the GPUs of this machine)")
    return device


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
    if name == "knn":
        return NeighbourVoting(cfg, ds.train, features, ds.num_user, ds.num_hashtag)
    if name in PAPER_BASELINES:
        return PAPER_BASELINES[name](cfg, ds.train, features, num_user=ds.num_user, num_hashtag=ds.num_hashtag)
    if name == "gcn_phr" and cfg.graph == "homogeneous":
        return HomogeneousGCN(cfg, ds.graph, features)
    cls = {"gcn_phr": GCNPHR, "released": ReleasedGCN}[name]
    return cls(cfg, ds.graph, features)


class NegativeSampler:
    """One negative hashtag per training row (SPEC §3; K with ``per_row``), redrawn each call, vectorised.

    Each negative is, with probability ``user_share``, one of the hashtags the row's user used in training
    (uniform over her distinct hashtags), and otherwise drawn from the hashtags seen in training, a share
    ``pop_share`` of those in proportion to popularity and the rest uniformly. ``user_share = pop_share = 0``
    is the paper's uniform draw. The hashtags of the row's own video are excluded (rejection, redrawing only
    the rejected entries; a user draw that keeps clashing, as for a user who put every hashtag of hers on this
    video, falls back to the global draw). User draws read the users' hashtags from ``graph``, the pair graph
    of the same training rows.
    """

    def __init__(self, train: Tensor, num_hashtag: int, pop_share: float, generator: torch.Generator,
                 per_row: int = 1, user_share: float = 0.0, graph: PairGraph | None = None):
        if user_share > 0 and graph is None:
            raise ValueError("NegativeSampler: user_share > 0 needs the pair graph of the training rows")
        self.prob = negative_distribution(train[:, 2], num_hashtag, pop_share)     # [H]
        self.num_hashtag = num_hashtag
        self.users, self.videos = train[:, 0], train[:, 1]
        self.own = torch.unique(train[:, 1] * num_hashtag + train[:, 2])         # sorted (video, tag) keys
        self.graph = graph
        self.gen = generator
        self.per_row = per_row
        self.user_share = user_share

    def _draw(self, n: int) -> Tensor:
        return torch.multinomial(self.prob, n, replacement=True, generator=self.gen)

    def _draw_own(self, users: Tensor) -> Tensor:
        """One of each user's distinct training hashtags, uniformly. ``[n] -> [n]``"""
        lo, hi = self.graph.user_ptr[users], self.graph.user_ptr[users + 1]       # the user's pairs
        pick = (torch.rand(users.numel(), generator=self.gen, dtype=torch.float64) * (hi - lo)).long()
        return self.graph.pair_hashtag[lo + torch.minimum(pick, hi - lo - 1)]

    def sample(self) -> Tensor:
        """``[R]`` one negative per row, or ``[R, K]`` with ``per_row`` K > 1."""
        k = self.per_row
        videos = self.videos if k == 1 else self.videos.repeat_interleave(k)      # [R·K]
        neg = self._draw(videos.numel())                                          # [R·K]
        own = torch.zeros(neg.numel(), dtype=torch.bool)                          # [R·K] a user draw?
        users = None                                                              # [R·K], for user draws
        if self.user_share > 0:
            users = self.users if k == 1 else self.users.repeat_interleave(k)     # [R·K]
            own = torch.rand(neg.numel(), generator=self.gen) < self.user_share
            neg[own] = self._draw_own(users[own])
        todo = torch.arange(neg.numel())
        for attempt in range(100):
            clash = torch.isin(videos[todo] * self.num_hashtag + neg[todo], self.own)
            todo = todo[clash]
            if todo.numel() == 0:
                return neg if k == 1 else neg.view(-1, k)
            if attempt >= 10:                                                     # give up on the user's own
                own[todo] = False
            again = own[todo]
            if not again.all():
                neg[todo[~again]] = self._draw(int((~again).sum()))
            if again.any():
                neg[todo[again]] = self._draw_own(users[todo[again]])
        raise RuntimeError("could not draw negatives: a training video carries nearly every hashtag")


class WeightAverage:
    r"""Exponential moving average of a model's parameters (``--ema_decay`` d): after every optimiser step
    :math:`\mathbf{a} \leftarrow d\,\mathbf{a} + (1 - d)\,\mathbf{w}`, starting from the weights after
    the first step. Training goes on with the weights themselves; :meth:`swapped` puts the average in
    the model for a while (validation, ``best.pt``) and the weights back after. Buffers are not averaged.

    Args:
        model (nn.Module): the model whose parameters are averaged (the same tensors under DDP).
        decay (float): d in (0, 1).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model, self.decay = model, decay
        self.average: dict[str, Tensor] = {}                  # empty until the first step

    @torch.no_grad()
    def update(self) -> None:
        for name, weight in self.model.named_parameters():
            if name in self.average:
                self.average[name].mul_(self.decay).add_(weight.detach(), alpha=1 - self.decay)
            else:
                self.average[name] = weight.detach().clone()

    @contextlib.contextmanager
    def swapped(self):
        """The average in the model's parameters inside the ``with`` block (nothing changes before the first
        step), the weights themselves again after it."""
        params = dict(self.model.named_parameters())
        kept = {name: params[name].detach().clone() for name in self.average}
        with torch.no_grad():
            for name, average in self.average.items():
                params[name].copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, weight in kept.items():
                    params[name].copy_(weight)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.average)

    def load_state_dict(self, state, path) -> None:
        """Take the average of a checkpoint, refusing one that does not fit the model (one line)."""
        params = dict(self.model.named_parameters())
        if not isinstance(state, dict) or set(state) != set(params) \
                or any(not isinstance(t, Tensor) or t.shape != params[name].shape for name, t in state.items()):
            raise SystemExit(f"error: {path}: expected the weight average (--ema_decay) of this model's parameters")
        self.average = {name: t.to(params[name].device, params[name].dtype).clone() for name, t in state.items()}


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
        progress: bool = True, log=print, resume: bool = False, dist: ddp.Dist | None = None) -> dict:
    """Train ``cfg.model_name``, keep the best validation epoch, evaluate test there once.

    Every epoch ends by rewriting ``out/last.pt`` (:func:`checkpoint_state`). With ``resume`` the run goes
    on from that file instead of starting afresh, and ends with the metrics an uninterrupted run would
    have (same device and threads); a run that had finished only evaluates test again.

    With ``dist`` (``torchrun``, ``ddp.py``) this process trains its shard of every global batch under
    ``DistributedDataParallel``; only rank 0 evaluates, logs and writes ``out``, and only it returns the
    results (the others return an empty dict).

    On the CPU the run uses torch's deterministic algorithms (restored afterwards): with several threads some
    backward accumulations otherwise add in a varying order, and the same seed would not give the same
    metrics. They cost nothing measurable here (one ``yfcc`` step: 0.77 s with, 0.82 s without). On CUDA the
    usual kernels stay, some of which are not deterministic.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(previous or device.type == "cpu")
    try:
        return _run(cfg, out, device, allow_pickle, progress, log, resume, dist)
    finally:
        torch.use_deterministic_algorithms(previous)


def _run(cfg: Config, out: Path, device: torch.device, allow_pickle: bool, progress: bool, log, resume: bool,
         dist: ddp.Dist | None) -> dict:
    start = time.time()
    main = dist is None or dist.main
    if not main:
        log, progress = (lambda *a, **k: None), False
    torch.manual_seed(cfg.seed)
    cores = (os.cpu_count() or 1) // (dist.local_world_size if dist else 1)  # shared by the local processes
    torch.set_num_threads(max(1, min(cfg.num_workers, cores)))
    data = resolve_data(cfg)
    ds = load_dataset(data, allow_pickle=allow_pickle)
    log(f"data    {ds}")
    model = build_model(cfg, ds).to(device)
    ckpt = read_checkpoint(out / LAST, cfg, data_record(data, ds), dist) if resume else None
    if cfg.PATH_weight_load and not resume:
        load_weights(model, cfg.PATH_weight_load)
    if dist is not None:  # the same initial weights everywhere; from here on, each process its own draws
        torch.manual_seed(ddp.rank_seed(cfg.seed, dist.rank))
        if getattr(model, "sampler", None) is not None:
            model.sampler.reseed(ddp.rank_seed(cfg.seed, dist.rank))
        log(f"ddp     {dist.world_size} processes ({'nccl' if device.type == 'cuda' else 'gloo'}), "
            f"{cfg.batch_size} rows per global batch")
    if main:
        make_run_dir(out)
        for stale_file in [*out.glob(".*.tmp"), *([] if resume else [out / name for name in RUN_FILES])]:
            stale_file.unlink(missing_ok=True)   # a killed write's temporary file; a replaced run's files
        if not resume:
            write_json_atomic(out / "config.json", {**asdict(cfg), "data": str(data), "device": str(device)})
    ks = cfg.ks
    evaluate = lambda split: evaluation.evaluate(split, model.scorer(), ks=ks,
                                                 batch_size=cfg.eval_batch_size, device=device)
    names = [f"{m}@{k}" for m in evaluation.METRICS for k in ks]
    header = ["epoch", "loss", *[f"val_{n}" for n in names], "seconds"]
    rows: list[list[str]] = []                                                 # metrics.csv, one per epoch

    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.l_r, weight_decay=cfg.weight_decay) \
        if model.trainable else None
    best, best_state, stale, first, finished = {"epoch": 0, "recall@10": -1.0}, None, 0, 1, False
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay and model.trainable else None

    def save_last(epoch: int) -> None:  # a collective under DDP: every process hands rank 0 its random states
        ranks = None if dist is None else dist.gather_objects(process_rng_state(model, device))
        if main:
            save_checkpoint(checkpoint_state(model, optimizer, gen, cfg, data_record(data, ds), epoch=epoch,
                                             finished=finished, best=best, best_state=best_state, stale=stale,
                                             rows=rows, device=device, ranks=ranks, average=average), out / LAST)

    if ckpt is not None:
        restore(ckpt, out / LAST, model, optimizer, gen, device, dist, average)
        best, best_state, stale, rows, finished = (ckpt[k] for k in ("best", "best_model", "stale", "metrics",
                                                                     "finished"))
        first = ckpt["epoch"] + 1
        if best_state is not None and main:                            # best.pt as it was at that epoch
            save_weights_state(best_state, cfg, out / BEST, epoch=best["epoch"])
        log(f"resume  {out / LAST}: epoch {ckpt['epoch']} done, best validation epoch {best['epoch']}"
            + ("; nothing left to train" if finished else ""))
    elif not model.trainable:
        finished = True
        if main:
            with torch.no_grad():
                model.eval()
                val = evaluate(ds.val)
            log(f"epoch   0  (nothing to train)  val R@10 {val['recall@10']:.4f}")
            best, best_state = {"epoch": 0, "recall@10": val["recall@10"], "val": val}, model.state_dict()
            save_weights(model, cfg, out / BEST, epoch=0)
        save_last(0)
    if main:
        write_csv_atomic(out / "metrics.csv", header, rows)

    last_epoch = cfg.num_epoch if model.trainable and not finished else 0
    if last_epoch:
        sampler = NegativeSampler(ds.train, ds.num_hashtag, cfg.neg_pop_share, gen, cfg.neg_per_row,
                                  cfg.neg_user_share, ds.graph)
        train_rows = ds.train.to(device)
        batch_loss = model.loss if dist is None else ddp.wrap(model, device)   # (users, videos, pos, neg, rows)
    for epoch in range(first, last_epoch + 1):
        t0 = time.time()
        model.train()
        neg = (sampler.sample() if cfg.neg_per_row else                          # [R] or [R, K], the same in
               torch.empty(len(ds.train), 0, dtype=torch.long)).to(device)       # every process; [R, 0]: all
        order = torch.randperm(len(ds.train), generator=gen).to(device)          # [R]
        total = 0.0
        batches = order.split(cfg.batch_size)
        for rows_batch in tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not progress):
            if dist is not None:
                rows_batch = dist.shard(rows_batch)                              # [B / N] this process's share
            users, videos, pos = train_rows[rows_batch].unbind(1)                # [B] each
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                loss = batch_loss(users, videos, pos, neg[rows_batch], rows_batch)
            global_loss = loss.detach() if dist is None else dist.all_sum(loss)   # the whole global batch's
            if not torch.isfinite(global_loss):
                kept = f"{out / LAST} (epoch {epoch - 1}) and {out / BEST} stay" if epoch > 1 \
                    else "no epoch finished, nothing was saved"
                raise SystemExit(f"error: epoch {epoch}: the loss is {global_loss.item()}; stopping ({kept})")
            optimizer.zero_grad(set_to_none=True)
            # DDP averages the processes' gradients; the loss is a sum, so each contributes N × its shard's
            (loss if dist is None else loss * dist.world_size).backward()
            optimizer.step()
            if average is not None:
                average.update()
            total += global_loss.item()
        model.eval()
        early = False
        if main:
            scored = average.swapped() if average is not None else contextlib.nullcontext()
            with scored, torch.no_grad():          # validation and best.pt take the weight average, if any
                val = evaluate(ds.val)
                seconds = time.time() - t0
                mean_loss = total / len(ds.train)
                rows.append([str(epoch), f"{mean_loss:.6f}", *[f"{val[n]:.6f}" for n in names], f"{seconds:.2f}"])
                improved = val["recall@10"] > best["recall@10"]
                log(f"epoch {epoch:3d}  loss {mean_loss:.4f}  val P@10 {val['precision@10']:.4f}  "
                    f"R@10 {val['recall@10']:.4f}  NDCG@10 {val['ndcg@10']:.4f}  {seconds:.1f}s"
                    + ("  *" if improved else ""))
                if improved:
                    best, stale = {"epoch": epoch, "recall@10": val["recall@10"], "val": val}, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    save_weights(model, cfg, out / BEST, epoch=epoch)
                else:
                    stale += 1
                early = bool(cfg.patience and stale >= cfg.patience)
        if dist is not None:                                  # the others wait here for rank 0's decision
            early = dist.broadcast_flag(early, device)
        finished = early or epoch == cfg.num_epoch
        save_last(epoch)
        if main:
            write_csv_atomic(out / "metrics.csv", header, rows)
        if early:
            log(f"early stop: no better validation Recall@10 for {cfg.patience} epochs")
            break

    if not main:
        dist.barrier()                                        # rank 0 evaluates test and writes the results
        return {}
    load_weights(model, out / BEST)
    model.eval()
    with torch.no_grad():
        test = evaluation.evaluate(ds.test, model.scorer(), ks=ks, batch_size=cfg.eval_batch_size, device=device,
                                   per_line=True)
    per_line = {name: v.numpy() for name, v in test.pop("per_line").items()}
    write_atomic(out / "test_per_line.npz", lambda fh: np.savez(fh, **per_line))
    if cfg.PATH_weight_save:
        save_weights(model, cfg, Path(cfg.PATH_weight_save), epoch=best["epoch"])
    results = {"model_name": cfg.model_name, "data": str(data), "seed": cfg.seed,
               "best_epoch": best["epoch"], "val": best["val"], "test": test,
               "seconds": round(time.time() - start, 2), "device": str(device),
               "generator": ds.meta.get("generator")}
    write_json_atomic(out / "results.json", results)
    log(f"test at best validation epoch {best['epoch']} ({cfg.model_name}, seed {cfg.seed}):")
    log(evaluation.format_table(test, ks))
    if dist is not None:
        dist.barrier()
    return results


# --------------------------------------------------------------------------------------------
# Run directory and checkpoints: atomic writes, resumable state
# --------------------------------------------------------------------------------------------
def check_writable(out: Path) -> None:
    """Refuse, before any work, a run directory that could not be created or written."""
    probe = out
    while not probe.exists() and probe != probe.parent:       # the nearest existing ancestor
        probe = probe.parent
    if not probe.is_dir():
        raise SystemExit(f"error: {out}: cannot create the run directory: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SystemExit(f"error: {out}: cannot create the run directory: {probe} is not writable")


def make_run_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SystemExit(f"error: {out}: cannot create the run directory ({err.strerror})") from None


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(fh)`` into ``path`` so that ``path`` is only ever the old file or the complete new one.

    The bytes go to ``.<name>.tmp`` in the same directory, are flushed and fsync'ed, and the file is
    renamed over ``path`` (atomic on POSIX); the directory is fsync'ed so the rename survives a crash
    too. A kill mid-write leaves only that temporary file, which no reader takes for a checkpoint (its
    name does not end in ``.pt``) and :func:`run` deletes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:                                           # no directory handles (Windows): rename is enough
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_csv_atomic(path: Path, header: list[str], rows: list[list[str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, lambda fh: fh.write(text.getvalue().encode("utf-8")))


def save_checkpoint(state: dict, path: Path) -> None:
    """``torch.save(state)`` to ``path`` atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda fh: torch.save(state, fh))


def data_record(data: Path, ds: Dataset) -> dict:
    """What a checkpoint remembers of its dataset, to refuse resuming on another one."""
    return {"path": str(data), "num_user": ds.num_user, "num_hashtag": ds.num_hashtag,
            "num_video": ds.num_video, "train_rows": len(ds.train), "num_neg": ds.num_neg}


def process_rng_state(model: Ranker, device: torch.device) -> dict:
    """This process's own random states: torch's global generator, CUDA's on a GPU, and the neighbour
    sampler's with ``--num_neigh`` (each process of a DDP run has its own)."""
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    if getattr(model, "sampler", None) is not None:
        rng["neighbours"] = model.sampler.generator().get_state()
    return rng


def checkpoint_state(model: Ranker, optimizer: torch.optim.Optimizer | None, gen: torch.Generator, cfg: Config,
                     data: dict, *, epoch: int, finished: bool, best: dict, best_state: dict | None, stale: int,
                     rows: list, device: torch.device, ranks: list[dict] | None = None,
                     average: WeightAverage | None = None) -> dict:
    """Everything :func:`run` needs to go on after ``epoch`` as if it had never stopped.

    Tensors, numbers, strings, lists and dicts only, so ``torch.load(weights_only=True)`` reads it. The
    random states are those of every source training draws from: the negatives' and batch order's
    generator, torch's global generator (dropout, the WARP and CSMN baselines' draws), on CUDA the
    device's generator, and the neighbour sampler's (``--num_neigh``); nothing in training uses numpy's or
    Python's ``random``. Under DDP, ``rng["ranks"]`` holds every process's own states, in rank order
    (:func:`process_rng_state`; rank 0's are also at the top level). ``average`` is the weight average of
    ``--ema_decay`` (None without it).
    """
    rng = {"negatives": gen.get_state(), **process_rng_state(model, device)}
    if ranks is not None:
        rng["ranks"] = ranks
    return {"format": 1, "model": model.state_dict(), "config": asdict(cfg), "epoch": epoch,
            "optimizer": optimizer.state_dict() if optimizer is not None else None, "finished": finished,
            "best": best, "best_model": best_state, "stale": stale, "metrics": rows, "rng": rng, "data": data,
            "average": average.state_dict() if average is not None else None}


def _read(path) -> dict:
    """A checkpoint of train.py as a dict (``weights_only=True``: no code from the file runs)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: no such checkpoint") from None
    except pickle.UnpicklingError as err:                  # torch's refusal: the reason is on a later line
        detail = [line.strip() for line in str(err).splitlines()[1:]
                  if line.strip() and not line.startswith(("Please file", "Check the documentation"))]
        raise SystemExit(f"error: {path}: expected a checkpoint of tensors, numbers and strings (read with "
                         f"weights_only=True, which runs no code), got {detail[-1] if detail else 'something else'}"
                         ) from None
    except Exception as err:  # noqa: BLE001 — anything unreadable is reported in one line
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise SystemExit(f"error: {path}: not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise SystemExit(f"error: {path}: expected a checkpoint written by train.py")
    return ckpt


def read_checkpoint(path: Path, cfg: Config, data: dict, dist: ddp.Dist | None = None) -> dict:
    """The resumable state in ``path``, checked against the run's config, dataset and number of processes
    (one-line errors)."""
    ckpt = _read(path)
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing or ckpt["format"] != 1:
        raise SystemExit(f"error: {path}: expected a resumable checkpoint (last.pt, format 1), got "
                         + (f"{missing[:3]} missing" if missing else f"format {ckpt['format']}"))
    saved = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
    diff = [f"{k}: {saved.get(k)!r} there, {v!r} in config.json" for k, v in asdict(cfg).items()
            if saved.get(k) != v]
    if diff:
        raise SystemExit(f"error: {path}: made for another config ({'; '.join(diff[:3])})")
    recorded = ckpt["data"] if isinstance(ckpt["data"], dict) else {}
    other = [f"{k} {recorded.get(k)} there, {v} in {data['path']}" for k, v in data.items()
             if k != "path" and recorded.get(k) != v]
    if other:
        raise SystemExit(f"error: {path}: made for another dataset ({'; '.join(other[:3])})")
    ranks = ckpt["rng"].get("ranks") if isinstance(ckpt["rng"], dict) else None
    made_by, now = len(ranks) if isinstance(ranks, list) else 1, 1 if dist is None else dist.world_size
    if made_by != now:
        again = "python train.py" if made_by == 1 else f"torchrun --nproc_per_node={made_by} train.py"
        raise SystemExit(f"error: {path}: made by {made_by} training process(es), resumed with {now}; resume "
                         f"it as it ran: {again} --resume …")
    return ckpt


def restore(ckpt: dict, path: Path, model: Ranker, optimizer: torch.optim.Optimizer | None,
            gen: torch.Generator, device: torch.device, dist: ddp.Dist | None = None,
            average: WeightAverage | None = None) -> None:
    """Put the model, the optimiser, the weight average and every random generator back as ``ckpt`` recorded
    them (under DDP, this process's own ones)."""
    if ckpt["best_model"] is not None:
        check_state(model, ckpt["best_model"], path)
    load_state(model, ckpt["model"], path)
    if average is not None:
        average.load_state_dict(ckpt["average"], path)
    try:
        if optimizer is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["rng"]["negatives"])
        own = ckpt["rng"] if dist is None else ckpt["rng"]["ranks"][dist.rank]
        torch.set_rng_state(own["torch"])
        if device.type == "cuda" and "cuda" in own:
            torch.cuda.set_rng_state(own["cuda"], device)
        if getattr(model, "sampler", None) is not None:
            model.sampler.generator().set_state(own["neighbours"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {path}: expected the optimiser and random states of this run "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


def check_state(model: Ranker, state, path) -> None:
    """Refuse, in one line naming the tensor and the shapes, weights that do not fit ``model``."""
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


def load_state(model: Ranker, state, path) -> None:
    """``model.load_state_dict(state)`` once :func:`check_state` accepts it."""
    check_state(model, state, path)
    model.load_state_dict(state)


def save_weights(model: Ranker, cfg: Config, path: Path, epoch: int) -> None:
    """Atomic checkpoint of the weights (:func:`save_checkpoint`), as ``best.pt`` and ``--PATH_weight_save``."""
    save_weights_state(model.state_dict(), cfg, path, epoch)


def save_weights_state(state: dict, cfg: Config, path: Path, epoch: int) -> None:
    save_checkpoint({"model": state, "config": asdict(cfg), "epoch": epoch}, path)


def load_weights(model: Ranker, path) -> int:
    """Load the weights of any checkpoint of train.py (``weights_only=True``: no code runs); the epoch."""
    ckpt = _read(path)
    load_state(model, ckpt["model"], path)
    return int(ckpt.get("epoch", 0))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def explicit_config_flags(argv: list[str]) -> dict:
    """The Config fields that ``argv`` sets, with their values (fields left at their default are absent)."""
    parser, unset = build_parser(), object()
    names = {f.name for f in fields(Config)}
    parser.set_defaults(**dict.fromkeys(names, unset))
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if k in names and v is not unset}


def resume_config(run_dir: Path, given: dict) -> tuple[Config, str]:
    """The config of the run to continue and the device it ran on (its ``config.json``); refuses a
    directory that cannot be resumed and flags that would change the run (``given``:
    :func:`explicit_config_flags`)."""
    record = run_dir / "config.json"
    if not run_dir.is_dir():
        raise SystemExit(f"error: --resume {run_dir}: expected a run directory of train.py, got no such directory")
    if not record.is_file():
        raise SystemExit(f"error: {record}: expected the config of the run to resume, got no such file")
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {record}: expected valid JSON, got {str(err).splitlines()[0]}") from None
    missing = [f.name for f in fields(Config) if not isinstance(saved, dict) or f.name not in saved]
    if missing:
        raise SystemExit(f"error: {record}: expected every setting of the run, got {missing[:3]} missing")
    if not (run_dir / LAST).is_file():
        raise SystemExit(f"error: {run_dir / LAST}: nothing to resume (no epoch of this run finished); "
                         f"start it again with --out {run_dir} --overwrite")
    cfg = Config(**{f.name: saved[f.name] for f in fields(Config)})
    try:
        cfg.validate()
    except ValueError as err:
        raise SystemExit(f"error: {record}: {err}") from None
    diff = [f"--{k} {v} (the run has {getattr(cfg, k)})" for k, v in given.items() if v != getattr(cfg, k)]
    if diff:
        raise SystemExit(f"error: --resume {run_dir}: a resumed run keeps its settings, got {'; '.join(diff[:3])}")
    return cfg, str(saved.get("device", "auto"))


def pick_ddp_device(request: str, no_cuda: bool, dist: ddp.Dist) -> torch.device:
    """Under ``torchrun``: process r trains on ``cuda:LOCAL_RANK`` (``auto`` with CUDA, or ``cuda``), else on
    the CPU; a fixed GPU index would put every process on one GPU and is refused."""
    if request.startswith("cuda:"):
        raise SystemExit(f"error: --device {request}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                         "pass --device cuda (or auto)")
    device = pick_device(request, no_cuda)
    if device.type != "cuda":
        return device
    if dist.local_rank >= torch.cuda.device_count():
        raise SystemExit(f"error: --nproc_per_node: process {dist.local_rank} of this machine has no GPU "
                         f"({torch.cuda.device_count()} here); start at most that many processes per machine")
    return torch.device("cuda", dist.local_rank)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    dist = ddp.from_env()                                          # torchrun with more than one process
    try:
        return _main(args, argv, dist)
    finally:
        if dist is not None:
            ddp.shutdown()


def _main(args: argparse.Namespace, argv: list[str], dist: ddp.Dist | None) -> int:
    main_rank = dist is None or dist.main
    request = args.device
    if args.resume:
        if (args.out and Path(args.out) != Path(args.resume)) or args.overwrite:
            raise SystemExit("error: --resume continues a run in its own directory: drop --out and --overwrite")
        out = Path(args.resume)
        cfg, ran_on = resume_config(out, explicit_config_flags(argv))
        if request == "auto":                                      # by default, on the device it ran on
            request = "cuda" if dist is not None and ran_on.startswith("cuda") else ran_on
    else:
        try:
            cfg = config_from_args(args)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        data = Path(cfg.data_path) if cfg.data_path else Path("data") / DEFAULT_PRESET
        out = Path(args.out) if args.out else default_run_dir(cfg, data)
        if out.exists() and out.is_dir() and any(out.iterdir()) and not args.overwrite:
            print(f"error: {out}: the run directory exists (pass --resume {out} to continue it, --overwrite to "
                  "start it again, or another --out)", file=sys.stderr)
            return 2
    device = pick_device(request, args.no_cuda) if dist is None else pick_ddp_device(request, args.no_cuda, dist)
    check_writable(out)
    if dist is not None:
        ddp.init(device)
        out = dist.broadcast_object(out)  # the default name has the time in it: rank 0's
        dist.barrier()                    # every process checked the directory before rank 0 writes into it
    try:
        run(cfg, out, device, allow_pickle=args.allow_pickle, progress=not args.quiet, resume=bool(args.resume),
            dist=dist)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if main_rank:
            again = "python train.py" if dist is None else f"torchrun --nproc_per_node={dist.world_size} train.py"
            print(f"error: interrupted; continue with: {again} --resume {out}", file=sys.stderr)
        return 130
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if main_rank:
        print(f"run directory: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
