"""Recommend hashtags with a trained model: the task of SPEC §1 as a command.

Given a user and a micro-video, rank **all** H hashtags with a checkpoint written by ``train.py``
(any ``--model_name``) and print or write the top K by name::

    python recommend.py RUN --user u0032 --features video.npy          # new video(s) of a user
    python recommend.py RUN --video v000123                            # a video of the dataset
    python recommend.py RUN --input posts.tsv --features visual.npy acoustic.npy textual.npy \\
        --output recs.tsv                                              # every line of a posts file

``RUN`` is a run directory (``config.json`` + ``best.pt``) or a checkpoint file. The dataset is the
one recorded in the run's ``config.json`` unless ``--data_path`` names another; a checkpoint without
a ``config.json`` beside it needs ``--data_path``. The model is rebuilt from the checkpoint's own
config. Users, videos and hashtags are named by the string ids of the dataset's ``*_list.txt``.

New micro-videos enter as feature rows appended to the dataset's: they get local ids V, V+1, … and,
like val/test videos, are not in the training graph, so the graph and the trained weights are
unchanged. Ranking is vectorised: the propagation runs once (``Ranker.all_scorer()``, or
``Ranker.scorer()`` with every hashtag as candidate for a ranker without it), the lines are grouped
by user, and every batch of B lines scores all hashtags ``[B, H]`` and keeps its top K. Grouping
matters for GCN-PHR and the released variant: their hashtag side h̄ = MLP_h([h ‖ u]) depends on the
user only, so it is computed once per distinct user of a batch, not once per line.

A user the model has never seen (not in ``user_list.txt``) gets a notice and the stand-in of
:data:`FALLBACK`: the *average known user* for models that read content, global training popularity
for the ones that do not.

Shape legend: U users, H hashtags, V videos of the dataset, n new videos, L lines, B batch,
K top-K, F feature dim, d latent dim.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

import train
from baselines import Popularity
from data_load import DataError, Dataset, exit_status, load_dataset
from model import AllScoreFn, Config, Ranker, ScoreFn

SCORE_CELLS = 2 ** 20
"""Default batch: as many lines as keep the ``[B, H]`` score matrix ≤ this many scores (at least one
line), 4 MiB in float32."""

GROUP_LINES = 2 ** 16
"""Lines are grouped by user within blocks of this many lines (a block's top K are kept until the block
is done)."""

FALLBACK = {
    "gcn_phr": "the average known user: the mean of every user's propagated representation x_u^L, "
               "scored with this video's content",
    "released": "the average known user: the mean of every user's propagated representation, "
                "scored with this video's content",
    "utm": "the average known user: the mean user embedding e_u, with this video's content",
    "ushm": "the average known user: the mean user embedding e_u, with this video's content",
    "contagnet": "the average known user: the mean user embedding e_u, with this video's content",
    "csmn": "a user context of the 60 most used training hashtags, with this video's content",
    "content": "nothing to replace: the content model does not use the user",
    "pop": "nothing to replace: global popularity does not use the user",
    "userpop": "global training popularity (the user has no training hashtags of her own)",
    "mf": "global training popularity (matrix factorisation has no content to go on)",
    "knn": "the votes of everyone's training videos alone (the user has no videos or hashtags of her own)",
}
"""``--model_name`` → how a user the model has never seen is ranked."""


# --------------------------------------------------------------------------------------------
# The run: checkpoint, config, dataset
# --------------------------------------------------------------------------------------------
def open_run(run, data_path=None, allow_pickle: bool = False) -> tuple[Path, Config, Dataset]:
    """``(checkpoint, config, dataset)`` of a run directory or checkpoint file.

    The config is the one saved in the checkpoint; the dataset is ``data_path``, else the ``data``
    recorded in the run's ``config.json`` (in ``run``, or beside the checkpoint file).
    """
    run = Path(run)
    ckpt = run / "best.pt" if run.is_dir() else run
    if not ckpt.is_file():
        raise DataError(f"{ckpt}: expected a checkpoint written by train.py (a run directory holds best.pt), "
                        "got no such file")
    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 — anything unreadable is reported in one line
        raise DataError(f"{ckpt}: expected a readable checkpoint, got {str(err).splitlines()[0]}") from None
    saved_cfg = saved.get("config") if isinstance(saved, dict) else None
    if not isinstance(saved_cfg, dict):
        raise DataError(f"{ckpt}: expected a checkpoint written by train.py (with its config), got none")
    cfg = Config(**{f.name: saved_cfg[f.name] for f in fields(Config) if f.name in saved_cfg})
    try:
        cfg.validate()
    except ValueError as err:
        raise DataError(f"{ckpt}: expected a valid saved config, got {err}") from None
    if data_path is None:
        record = ckpt.parent / "config.json"
        if not record.is_file():
            raise DataError(f"{ckpt}: expected --data_path (no config.json beside the checkpoint records "
                            "its dataset)")
        try:
            data_path = json.loads(record.read_text(encoding="utf-8"))["data"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{record}: expected a JSON object with the run's \"data\" directory "
                            "(or pass --data_path)") from None
    return ckpt, cfg, load_dataset(data_path, allow_pickle=allow_pickle)


def _with_all(score: ScoreFn, score_all: AllScoreFn | None, num_tag: int) -> tuple[ScoreFn, AllScoreFn]:
    """``(score, score_all)``; a ranker without ``all_scorer()`` ranks every hashtag through ``score``."""
    if score_all is None:
        def score_all(users: Tensor, videos: Tensor) -> Tensor:
            every = torch.arange(num_tag, device=users.device)                             # [H]
            return score(users, videos, every.expand(users.numel(), num_tag))              # [B, H]
    return score, score_all


def unseen_user_scorers(model: Ranker, cfg: Config, ds: Dataset) -> tuple[ScoreFn, AllScoreFn]:
    """The model's ``score(users [B], videos [B], cand [B, C]) -> [B, C]`` and ``score_all(users [B],
    videos [B]) -> [B, H]`` (the same scores for every hashtag: ``Ranker.all_scorer()``, faster) with one
    more user id, ``U``: the stand-in for every user the model has never seen (:data:`FALLBACK`).

    Call under ``torch.no_grad()``; the models that keep a user table (UTM, USHM, ConTagNet, CSMN)
    get one more row in it.
    """
    name, num_user, num_tag = cfg.model_name, ds.num_user, ds.num_hashtag
    if name in ("gcn_phr", "released"):
        reps = model.propagate()
        user = torch.cat([reps.user, reps.user.mean(0, keepdim=True)])             # [U+1, d]
        tag_part = model.scoring.tag_part(reps.tag)                                 # [H, d], once

        def score(users: Tensor, videos: Tensor, cand: Tensor) -> Tensor:
            tags = F.embedding(cand, tag_part)                  # [B, C, d]; = tag_part[cand], 3x faster
            return model.scoring(user[users], reps.video[videos], tag_part=tags)

        def score_all(users: Tensor, videos: Tensor) -> Tensor:
            distinct, of_line = torch.unique(users, return_inverse=True)               # [G], [B]
            return model.scoring.score_all(user[distinct], reps.video[videos], of_line, tag_part)

        return score, score_all
    if name in ("utm", "ushm", "contagnet"):
        emb = model.user_emb
        model.user_emb = nn.Parameter(torch.cat([emb, emb.mean(0, keepdim=True)]), requires_grad=False)
        return _with_all(model.scorer(), model.all_scorer(), num_tag)
    if name == "csmn":
        count = torch.bincount(ds.train[:, 2], minlength=ds.num_hashtag)                 # [H]
        top = count.argsort(descending=True, stable=True)[: model.context.size(1)]
        device = model.context.device
        model.context = torch.cat([model.context, top.unsqueeze(0).to(device)])          # [U+1, S_c]
        model.context_mask = torch.cat([model.context_mask, (count[top] > 0).unsqueeze(0).to(device)])
        return _with_all(model.scorer(), model.all_scorer(), num_tag)
    if name == "mf":
        popularity = Popularity(ds.train, ds.num_hashtag).to(model.user_emb.device)
        known, popular = model.scorer(), popularity.scorer()
        known_all, popular_all = _with_all(known, model.all_scorer(), num_tag)[1], popularity.all_scorer()

        def score(users: Tensor, videos: Tensor, cand: Tensor) -> Tensor:
            unseen = (users == num_user).unsqueeze(1)                                      # [B, 1]
            return torch.where(unseen, popular(users, videos, cand),
                               known(users.clamp(max=num_user - 1), videos, cand))

        def score_all(users: Tensor, videos: Tensor) -> Tensor:
            unseen = (users == num_user).unsqueeze(1)                                      # [B, 1]
            return torch.where(unseen, popular_all(users, videos),
                               known_all(users.clamp(max=num_user - 1), videos))

        return score, score_all
    # pop and content ignore the user; userpop: user U has no pairs
    return _with_all(model.scorer(), model.all_scorer(), num_tag)


def user_batches(users: Tensor, batch_size: int) -> list[int]:
    """Bounds ``[0, …, L]`` of batches of at most ``batch_size`` lines over lines sorted by user
    (``users [L]``): a batch ends where a user's lines end, unless one user alone has more lines."""
    ends = torch.unique_consecutive(users, return_counts=True)[1].cumsum(0).tolist()
    bounds, last = [0], 0                          # last: where the last whole user of this batch ends
    for end in ends:
        if end - bounds[-1] > batch_size:
            if last > bounds[-1]:
                bounds.append(last)
            while end - bounds[-1] > batch_size:
                bounds.append(bounds[-1] + batch_size)
        last = end
    if ends and bounds[-1] != ends[-1]:
        bounds.append(ends[-1])
    return bounds


class Recommender:
    """A trained ranker over a dataset plus ``n`` new videos, ranking all H hashtags for batches of
    (user, video) lines.

    Args:
        ckpt (Path), cfg (Config), ds (Dataset): from :func:`open_run`.
        new_features (Tensor, optional): ``[n, F]`` features of new videos, local ids ``V … V+n−1``.
        device (str): ``"cpu"`` (default) or a CUDA device.
    """

    def __init__(self, ckpt: Path, cfg: Config, ds: Dataset, new_features: Tensor | None = None,
                 device: str = "cpu") -> None:
        self.cfg, self.ds, self.device = cfg, ds, torch.device(device)
        features = ds.features()                                                          # [V, F]
        if new_features is not None:
            features = torch.cat([features, new_features])                                # [V+n, F]
        model = train.build_model(cfg, ds, features=features)
        try:
            self.epoch = train.load_weights(model, ckpt)
        except SystemExit as err:                       # train.py's one-line "error: ..." messages
            raise DataError(str(err).removeprefix("error: ")) from None
        self.model = model.to(self.device).eval()
        with torch.no_grad():
            self.score, self.score_all = unseen_user_scorers(self.model, cfg, ds)
        self.user_index = {name: i for i, name in enumerate(ds.user_names)}

    @property
    def unseen(self) -> int:
        """The user id standing in for every user the model has never seen (= U)."""
        return self.ds.num_user

    def user_id(self, name: str) -> int:
        """Local id of a user name; :attr:`unseen` for a name not in ``user_list.txt``."""
        return self.user_index.get(name, self.unseen)

    def rank(self, users: Tensor, videos: Tensor, k: int = 10, batch_size: int | None = None,
             progress: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """For lines ``(users [L], videos [L])``, yield batch after batch, in line order,
        ``(top [B, K], scores [B, K])``: the K best hashtags of each line, best first, out of all H, and
        their scores.

        Within each block of :data:`GROUP_LINES` lines, the lines are scored grouped by user
        (:func:`user_batches`), so that a user's hashtag side is computed once per block.
        """
        num_tag = self.ds.num_hashtag
        k = min(k, num_tag)
        batch_size = batch_size or max(1, SCORE_CELLS // num_tag)
        with torch.no_grad(), tqdm(total=users.numel(), unit="line", disable=not progress) as bar:
            for first in range(0, users.numel(), GROUP_LINES):
                block_users = users[first:first + GROUP_LINES]                            # [L']
                block_videos = videos[first:first + GROUP_LINES]                          # [L']
                order = torch.argsort(block_users, stable=True)                           # [L'] by user
                top = torch.empty(order.numel(), k, dtype=torch.long)                     # [L', K]
                best = torch.empty(order.numel(), k)                                      # [L', K]
                bounds = user_batches(block_users[order], batch_size)
                for start, end in zip(bounds, bounds[1:]):
                    lines = order[start:end]                                              # [B]
                    scores = self.score_all(block_users[lines].to(self.device),
                                            block_videos[lines].to(self.device))          # [B, H]
                    found = scores.topk(k, dim=1)                                         # [B, K]
                    top[lines], best[lines] = found.indices.cpu(), found.values.cpu()
                    bar.update(lines.numel())
                for start in range(0, order.numel(), batch_size):
                    yield top[start:start + batch_size], best[start:start + batch_size]


# --------------------------------------------------------------------------------------------
# Inputs: feature files and posts files
# --------------------------------------------------------------------------------------------
def read_features(paths, ds: Dataset, rows: int | None = None) -> Tensor:
    """``[n, F]`` float32 features of new videos: one file with all F columns (one row, or one per
    video), or one file per feature block of the dataset, in its block order."""
    paths = [Path(p) for p in paths]
    described = " + ".join(f"{n} {b.shape[1]}" for n, b in zip(ds.feature_names, ds.feature_blocks))
    if len(paths) == 1:
        widths = [(ds.feature_dim, f"{ds.feature_dim} feature columns ({described})")]
    elif len(paths) == len(ds.feature_blocks):
        widths = [(b.shape[1], f"{b.shape[1]} columns (feature block {n!r})")
                  for n, b in zip(ds.feature_names, ds.feature_blocks)]
    else:
        raise DataError(f"--features: expected one file of {ds.feature_dim} columns or "
                        f"{len(ds.feature_blocks)} block files ({described}), got {len(paths)} files")
    blocks = []
    for path, (width, expected) in zip(paths, widths):
        if not path.is_file():
            raise DataError(f"{path}: expected a .npy feature file, got no such file")
        try:
            block = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"{path}: expected a plain .npy float array, got {str(err).splitlines()[0]}") from None
        if block.ndim == 1:
            block = block[None]                                                          # [1, F]
        if block.ndim != 2 or block.dtype.kind != "f":
            raise DataError(f"{path}: expected a 2-D float array [videos, features], got {block.ndim}-D "
                            f"{block.dtype}")
        if block.shape[1] != width:
            raise DataError(f"{path}: expected {expected}, got {block.shape[1]}")
        if rows is not None and block.shape[0] != rows:
            raise DataError(f"{path}: expected {rows} rows (one per input line, same order), got {block.shape[0]}")
        rows = block.shape[0]
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if bad.size:
            raise DataError(f"{path}: row {int(bad[0])}: expected finite feature values, got NaN or inf")
        blocks.append(block.astype(np.float32, copy=False))
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(blocks, axis=1)))       # [n, F]


@dataclass
class Posts:
    """The lines of a posts file: names, and each line's hashtags when the file has that column."""

    videos: list[str]
    users: list[str]
    tags: list[list[str]] | None


def read_posts(path, tag_index: dict[str, int]) -> Posts:
    """Read ``posts.tsv`` (``prepare``'s format; the hashtags column is optional)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: expected a posts file, got no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: expected UTF-8 text, got undecodable bytes") from None
    if not lines:
        raise DataError(f"{path}: expected a header line, got an empty file")
    header = lines[0].split("\t")
    if header not in (["video", "user", "hashtags"], ["video", "user"]):
        raise DataError(f"{path}: line 1: expected the header 'video<TAB>user<TAB>hashtags' or "
                        f"'video<TAB>user', got {lines[0][:60]!r}")
    posts = Posts([], [], [] if len(header) == 3 else None)
    for lineno, text in enumerate(lines[1:], start=2):
        cells = [c.strip() for c in text.split("\t")]
        if len(cells) != len(header):
            raise DataError(f"{path}: line {lineno}: expected {len(header)} tab-separated fields "
                            f"({', '.join(header)}), got {len(cells)}")
        if not cells[0] or not cells[1]:
            raise DataError(f"{path}: line {lineno}: expected non-empty video and user names, got {text[:60]!r}")
        posts.videos.append(cells[0])
        posts.users.append(cells[1])
        if posts.tags is not None:
            tags = cells[2].split()
            unknown = [t for t in tags if t not in tag_index]
            if unknown:
                raise DataError(f"{path}: line {lineno}: expected hashtags of the dataset's hashtag_list.txt, "
                                f"got unknown {unknown[0]!r}")
            posts.tags.append(tags)
    if not posts.videos:
        raise DataError(f"{path}: expected at least one line after the header, got none")
    return posts


SPLIT_NAMES = ("train", "val", "test")


def lookup_videos(ds: Dataset, names: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """Videos of the dataset by name: local ids ``[n]``, their users ``[n]`` (from the training rows or
    the val/test line) and their split ``[n]`` (an index into :data:`SPLIT_NAMES`)."""
    index = {name: i for i, name in enumerate(ds.video_names)}
    unknown = [name for name in names if name not in index]
    if unknown:
        raise DataError(f"--video {unknown[0]!r}: expected a micro-video of {ds.path / 'video_list.txt'}, "
                        "got an unknown name")
    owner = torch.empty(ds.num_video, dtype=torch.long)                                    # [V]
    split = torch.zeros(ds.num_video, dtype=torch.long)                                    # [V]
    owner[ds.train[:, 1]] = ds.train[:, 0]
    for code, part in ((1, ds.val), (2, ds.test)):
        owner[part.videos], split[part.videos] = part.users, code
    videos = torch.tensor([index[name] for name in names])                                 # [n]
    return videos, owner[videos], split[videos]


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
def format_ranking(title: str, names: list[str], scores: list[float], given: list[bool] | None = None) -> str:
    """A printable top-K table under a title line; ``given`` adds a column of ``*`` marks."""
    width = max(len("hashtag"), *map(len, names))
    marks = ["      *" if g else "" for g in given] if given is not None else [""] * len(names)
    rows = [f"  {r:>4}  {n:<{width}}  {s:>10.4f}{m}" for r, (n, s, m) in enumerate(zip(names, scores, marks), 1)]
    head = f"  rank  {'hashtag':<{width}}  {'score':>10}" + ("  given" if given is not None else "")
    return "\n".join([title, head, *rows])


def write_recommendations(rec: Recommender, posts: Posts, users: Tensor, videos: Tensor, out, k: int,
                          batch_size: int | None = None, progress: bool = True) -> int:
    """Write the top-K TSV of every line (``video user rank hashtag score [given]``) atomically:
    ``out`` is either untouched or the complete file. Returns the number of rows written."""
    out = Path(out)
    if not out.parent.is_dir():
        raise DataError(f"--output {out}: expected an existing directory for it, got no {out.parent}")
    names = rec.ds.hashtag_names
    columns = ["video", "user", "rank", "hashtag", "score"] + (["given"] if posts.tags is not None else [])
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    written, line = 0, 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write("\t".join(columns) + "\n")
            for top, scores in rec.rank(users, videos, k, batch_size, progress=progress):
                chunk = []
                for ids, vals in zip(top.tolist(), scores.tolist()):
                    video, user = posts.videos[line], posts.users[line]
                    given = set(posts.tags[line]) if posts.tags is not None else None
                    for r, (h, s) in enumerate(zip(ids, vals), start=1):
                        tail = f"\t{int(names[h] in given)}" if given is not None else ""
                        chunk.append(f"{video}\t{user}\t{r}\t{names[h]}\t{s:.6g}{tail}\n")
                    line += 1
                fh.write("".join(chunk))
                written += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return written


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Recommend hashtags for micro-videos with a model trained by train.py.")
    parser.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a run directory of train.py (config.json + best.pt) or a checkpoint file")
    parser.add_argument("--data_path", default=None,
                        help="dataset directory (default: the one in the run's config.json)")
    parser.add_argument("--allow_pickle", action="store_true",
                        help="allow reading a legacy (pickled) dataset: unpickling runs code, trusted files only")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--user", help="a user name (with --features: her new video(s), one row each)")
    mode.add_argument("--video", nargs="+", help="micro-video name(s) of the dataset; the hashtags its user "
                      "gave it are marked")
    mode.add_argument("--input", metavar="POSTS", help="posts file: header 'video<TAB>user[<TAB>hashtags]', "
                      "one line per video (needs --features and --output)")
    parser.add_argument("--features", nargs="+", metavar="NPY", help="new videos' features: one .npy with every "
                        "column (rows = videos), or one .npy per feature block in the dataset's order")
    parser.add_argument("--output", metavar="TSV", help="recommendations of --input (written atomically)")
    parser.add_argument("--topk", type=int, default=10, help="hashtags per video (default: 10)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--batch_size", type=int, default=None,
                        help=f"videos ranked at once (default: B × H ≤ {SCORE_CELLS} scores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if (args.user is not None or args.input is not None) and not args.features:
        raise DataError(f"{'--user' if args.user is not None else '--input'}: expected --features with the "
                        "new videos' features")
    if args.video is not None and args.features:
        raise DataError("--video: expected no --features (a video of the dataset has its own)")
    if (args.input is not None) != (args.output is not None):
        raise DataError("--input and --output: expected both or neither")
    if args.topk < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise DataError(f"--topk and --batch_size: expected positive values, got {args.topk}, {args.batch_size}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"--device {args.device}: expected a machine with CUDA, got none (use --device cpu)")
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        raise DataError(f"--device: expected cpu, cuda or cuda:N, got {args.device!r}")


def _notice_unseen(rec: Recommender, who: str) -> None:
    print(f"notice: {who} not among the {rec.ds.num_user} users this model was trained with; ranked by the "
          f"fallback for {rec.cfg.model_name}: {FALLBACK[rec.cfg.model_name]}", file=sys.stderr)


def run(args: argparse.Namespace) -> None:
    _check_args(args)
    ckpt, cfg, ds = open_run(args.run, args.data_path, args.allow_pickle)
    tag_index = {name: i for i, name in enumerate(ds.hashtag_names)}
    posts = read_posts(args.input, tag_index) if args.input is not None else None
    new = None
    if args.features:
        new = read_features(args.features, ds, rows=len(posts.videos) if posts is not None else None)
    if args.video is not None:
        videos, users, split = lookup_videos(ds, args.video)                               # [n] each
    rec = Recommender(ckpt, cfg, ds, new_features=new, device=args.device)
    model_line = (f"{cfg.model_name} from {ckpt} (epoch {rec.epoch}), {ds.num_hashtag} hashtags "
                  f"of {ds.path}")
    names = ds.hashtag_names

    if posts is not None:
        start = time.time()
        users = torch.tensor([rec.user_id(u) for u in posts.users])                          # [L]
        unseen = (users == rec.unseen).nonzero().flatten().tolist()
        if unseen:
            _notice_unseen(rec, f"{len(unseen)} of {len(users)} lines have a user (first: "
                                f"{posts.users[unseen[0]]!r} on line {unseen[0] + 2})")
        videos = torch.arange(ds.num_video, ds.num_video + len(posts.videos))                 # [L]
        rows = write_recommendations(rec, posts, users, videos, args.output, args.topk, args.batch_size,
                                     progress=not args.quiet)
        print(f"{model_line}\nwrote {args.output}: {rows} rows, top {min(args.topk, ds.num_hashtag)} for each "
              f"of {len(posts.videos)} lines in {time.time() - start:.1f} s")
        return

    print(model_line)
    if args.user is not None:
        n = new.size(0)
        users = torch.full((n,), rec.user_id(args.user))                                     # [n]
        videos = torch.arange(ds.num_video, ds.num_video + n)                                 # [n]
        if users[0] == rec.unseen:
            _notice_unseen(rec, f"user {args.user!r} is")
        titles = [f"user {args.user}, video {i} of {args.features[0]}" if n > 1 else
                  f"user {args.user}, the video of {args.features[0]}" for i in range(n)]
        given = [None] * n
    else:
        given, titles = [], []
        for name, v, u, part in zip(args.video, videos.tolist(), users.tolist(), split.tolist()):
            tags = set(ds.video_tags[ds.video_tags_ptr[v]:ds.video_tags_ptr[v + 1]].tolist())
            given.append(tags)
            seen = "in the training graph" if part == 0 else "not in the training graph"
            titles.append(f"video {name} of user {ds.user_names[u]} ({SPLIT_NAMES[part]} split, {seen}); "
                          f"* = a hashtag the user gave it ({len(tags)} in all)")
    line = 0
    for top, scores in rec.rank(users, videos, args.topk, args.batch_size):
        for ids, vals in zip(top.tolist(), scores.tolist()):
            marks = [h in given[line] for h in ids] if given[line] is not None else None
            print("\n" + format_ranking(f"{titles[line]}: top {len(ids)} of {ds.num_hashtag} hashtags",
                                        [names[h] for h in ids], vals, marks))
            line += 1


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
