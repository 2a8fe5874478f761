"""Where a trained ranker wins and loses on a validation or test split, next to ``userpop``.

The diagnosis of GCN-PHR (README "Does it learn?", docs/RESULTS.md) rests on these three views of a run:

1. **Hits by kind of positive.** Every positive of every line is *seen* (its user used that hashtag in
   training) or *new*; on data from ``make_data.py`` it is also *generic* (a content-free ``gen_*`` hashtag)
   or *topical* (``t<k>_*``). For each kind: how many positives, and the share ranked in the top K of
   their line (ranked as the evaluation ranks them, ties against the positive). ``userpop`` is scored
   beside the model. The same by how often the user used the positive in training (0, 1, 2, 3, 4 or more),
   with each group's part of NDCG@K (the parts add up to the split's NDCG@K) and the mean rank of its
   hits: where a model gains or loses NDCG against ``userpop``, and whether it is by missing positives or
   by ordering them.
2. **What outranks the seen positives the model misses**: per miss, how many negatives above it are
   seen / new for the user (and generic / topical; a topical one in a topic of the line's positives or in
   another topic), and how often the new ones were used in training. The same for the *hits* used four times
   or more, whose order costs NDCG@K, with each seen negative above also told by whether its user used it
   more often than the positive, as often, or less.
3. **Does it use the video?** Recall@K again with each line's video replaced by a random training video
   of the same user, then by a random training video of anyone (seeded). A model that ignores the video
   scores the same; a content-aware one loses.

The same views of one of the generator's reference rankers (``--reference``, e.g. ``topic_counts``, what
counting the split does when told the true topics) show where a yardstick wins that a model does not.

Usage::

    python diagnose.py RUN_DIR [--data_path DIR] [--split test] [--k 10] [--seed 0]
    python diagnose.py --reference topic_counts --data_path data/small    # a reference ranker of make_data.py

Shape legend: B lines, C candidates per line, U users, H hashtags.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import evaluation
import make_data
import train
from baselines import UserPopularity
from data_load import DataError, Dataset, Split, exit_status, load_dataset
from recommend import open_run

BATCH = 256  # lines scored at once
MAX_USES = 4  # positives used this often or more by their user in training are counted together


NAME = re.compile(r"(gen|t(\d+))_h\d+")  # hashtag names of make_data.py: gen_h<r> or t<topic>_h<r>


def kinds(ds: Dataset) -> np.ndarray:
    """``[H]`` "generic", "topical" (hashtag names of ``make_data.py``) or "" (any other dataset)."""
    names = ds.hashtag_names
    if not all(NAME.fullmatch(n) for n in names):
        return np.full(len(names), "", dtype=object)
    return np.array(["generic" if n.startswith("gen_h") else "topical" for n in names], dtype=object)


def topics(ds: Dataset) -> np.ndarray:
    """``[H]`` the topic of each hashtag of ``make_data.py`` (``t<topic>_h<r>``); -1 for a generic hashtag
    and for every hashtag of any other dataset."""
    matches = [NAME.fullmatch(n) for n in ds.hashtag_names]
    if not all(matches):
        return np.full(len(matches), -1)
    return np.array([int(m.group(2)) if m.group(2) else -1 for m in matches])


def by_kind(ds: Dataset, split: Split, score, k: int) -> dict:
    """Hits in the top ``k`` by kind of positive, and what outranks the seen positives that miss (candidates
    and ranks as :func:`evaluation.evaluate` makes them)."""
    pair_uses = Counter(map(tuple, ds.train[:, [0, 2]].tolist()))                 # (user, hashtag) -> rows
    kind, topic = kinds(ds), topics(ds)
    uses = torch.bincount(ds.train[:, 2], minlength=ds.num_hashtag)
    num_neg = split.negatives.size(1)
    hits: dict[str, list[int]] = {}
    by_uses: dict[int, list[int]] = {}
    ndcg_by_uses: dict[int, float] = {}                                               # uses -> part of NDCG@k
    hit_ranks: dict[int, list[int]] = {}                                              # uses -> ranks <= k
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))                              # [k] ideal DCG, 1..k
    intruders: dict[str, int] = {}
    habit_intruders: dict[str, int] = {}                                              # above the hits used 4+
    habit_hits = 0
    new_uses: list[int] = []
    misses = 0
    for lo in range(0, len(split), BATCH):
        lines = torch.arange(lo, min(lo + BATCH, len(split)))                         # [B]
        cand, pos_mask, valid = evaluation.candidates(split, lines)                   # [B, C]
        scores = score(split.users[lines], split.videos[lines], cand)                 # [B, C]
        users = split.users[lines].tolist()
        idcg = ideal[pos_mask.sum(1).clamp(max=k).numpy() - 1]                        # [B] as evaluation's
        for b, j, rank in zip(*(t.tolist() for t in evaluation.positive_ranks(scores, pos_mask, valid))):
            user, h = users[b], int(cand[b, j])
            times = pair_uses[user, h]                                                  # 0 when never used
            seen = times > 0
            hit = rank <= k
            hits.setdefault(" ".join(x for x in (kind[h], "seen" if seen else "new") if x), []).append(hit)
            group = min(times, MAX_USES)
            by_uses.setdefault(group, []).append(hit)
            ndcg_by_uses[group] = ndcg_by_uses.get(group, 0.0) + (
                1.0 / np.log2(rank + 1) / idcg[b] / len(split) if hit else 0.0)
            if hit:
                hit_ranks.setdefault(group, []).append(rank)
            habit = hit and group == MAX_USES
            if (seen and not hit) or habit:
                misses += not hit
                habit_hits += habit
                line_topics = set(topic[cand[b][pos_mask[b]].cpu().numpy()].tolist()) - {-1}  # its positives'
                for n in cand[b, :num_neg][scores[b, :num_neg] >= scores[b, j]].tolist():
                    n_times = pair_uses.get((user, n), 0)
                    key = " ".join(x for x in (kind[n], "seen" if n_times else "new") if x)
                    if topic[n] >= 0:
                        key += " (line's topic)" if topic[n] in line_topics else " (other topic)"
                    if habit:
                        more = ("used more" if n_times > times else "used as often" if n_times == times
                                else "used less") if n_times else ""
                        habit_key = f"{key}, {more}" if more else key
                        habit_intruders[habit_key] = habit_intruders.get(habit_key, 0) + 1
                        continue
                    intruders[key] = intruders.get(key, 0) + 1
                    if not n_times:
                        new_uses.append(int(uses[n]))
    return {"hits": {name: (len(v), float(np.mean(v))) for name, v in sorted(hits.items())},
            "by_uses": {uses: (len(v), float(np.mean(v))) for uses, v in sorted(by_uses.items())},
            "ndcg_by_uses": dict(sorted(ndcg_by_uses.items())),
            "hit_rank_by_uses": {uses: float(np.mean(v)) for uses, v in sorted(hit_ranks.items())},
            "misses": misses, "intruders": {name: c / max(misses, 1) for name, c in sorted(intruders.items())},
            "habit_hits": habit_hits,
            "habit_intruders": {name: c / max(habit_hits, 1) for name, c in sorted(habit_intruders.items())},
            "new_intruder_uses": (float(np.mean(new_uses)), float(np.median(new_uses))) if new_uses else None}


def swapped_recall(ds: Dataset, split: Split, score, k: int, seed: int) -> dict:
    """Recall@k with the lines' own videos, a random training video of the same user, and of anyone."""
    gen = torch.Generator().manual_seed(seed)
    user_video = torch.unique(ds.train[:, :2], dim=0)                                  # [V_train, 2] by user
    ptr = torch.cat([torch.zeros(1, dtype=torch.long),
                     torch.bincount(user_video[:, 0], minlength=ds.num_user).cumsum(0)])   # [U + 1]
    users = split.users
    lo, n = ptr[users], ptr[users + 1] - ptr[users]                                     # [N]
    if (n == 0).any():
        raise DataError(f"{ds.path}: expected every line's user to have a training video, got a user without")
    own = user_video[lo + (torch.rand(len(users), generator=gen, dtype=torch.float64) * n).long(), 1]  # [N]
    anyone = user_video[torch.randint(len(user_video), (len(users),), generator=gen), 1]              # [N]
    out = {}
    for name, videos in (("own video", None), ("another video of the user", own), ("anyone's video", anyone)):
        fn = score if videos is None else _with_videos(score, split, videos)
        out[name] = evaluation.evaluate(split, fn, ks=(k,), batch_size=BATCH)[f"recall@{k}"]
    return out


def _with_videos(score, split: Split, videos: Tensor):
    """A scorer that ignores the videos it is given and uses ``videos`` [N] of the split's lines instead.
    ``evaluation.evaluate`` walks the lines in order, so a running offset finds each batch's lines."""
    state = {"at": 0}

    def fn(users, _videos, cand):
        at = state["at"]
        state["at"] = at + len(users)
        return score(users, videos[at: at + len(users)], cand)
    return fn


def report(name: str, diag: dict, k: int) -> str:
    rows = [f"{name}: hits in the top {k} by kind of positive (positives, share)"]
    rows += [f"  {kind:16s} {n:6d}  {share:.3f}" for kind, (n, share) in diag["hits"].items()]
    rows.append(f"  seen positives missed: {diag['misses']}; candidates above each, on average: "
                + ", ".join(f"{kind} {c:.1f}" for kind, c in diag["intruders"].items()))
    if diag["new_intruder_uses"]:
        mean, median = diag["new_intruder_uses"]
        rows.append(f"  training uses of the new ones above: mean {mean:.1f}, median {median:.0f}")
    rows.append(f"  by the positive's training uses by its user (positives, share in the top {k}): "
                + ", ".join(f"{uses}{'+' if uses == MAX_USES else ''}: {n} {share:.3f}"
                            for uses, (n, share) in diag["by_uses"].items()))
    rows.append(f"  the same, part of NDCG@{k} (mean rank of the hits): "
                + ", ".join(f"{uses}{'+' if uses == MAX_USES else ''}: {part:.3f} "
                            f"({diag['hit_rank_by_uses'].get(uses, float('nan')):.2f})"
                            for uses, part in diag["ndcg_by_uses"].items())
                + f"; NDCG@{k} {sum(diag['ndcg_by_uses'].values()):.3f}")
    rows.append(f"  hits used {MAX_USES}+ times: {diag['habit_hits']}; negatives above each, on average "
                f"({sum(diag['habit_intruders'].values()):.2f} in all): "
                + ", ".join(f"{kind} {c:.3f}" for kind, c in
                            sorted(diag["habit_intruders"].items(), key=lambda item: -item[1])))
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Where a trained ranker wins and loses, next to userpop "
                                                 "(see the module docstring).")
    parser.add_argument("run", nargs="?", default=None,
                        help="a run directory of train.py (config.json + best.pt) or a checkpoint file")
    parser.add_argument("--reference", choices=make_data.REFERENCES, default=None,
                        help="instead of a run: one of the generator's reference rankers, on a dataset written by "
                             "make_data.py (--data_path)")
    parser.add_argument("--data_path", default=None, help="dataset directory (default: the run's)")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--k", type=int, default=10, help="cut-off K")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random replacement videos")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    return parser


def run(args: argparse.Namespace) -> None:
    if args.k < 1:
        raise DataError(f"--k: expected a positive cut-off, got {args.k}")
    if (args.run is None) == (args.reference is None):
        raise DataError("expected a run directory or --reference NAME, "
                        + ("got neither" if args.run is None else "not both"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reference is not None:
        if args.data_path is None:
            raise DataError("--reference: expected --data_path, a dataset directory written by make_data.py")
        ds = load_dataset(args.data_path)
        name, source = args.reference, f"{args.reference} (the generator's reference ranker)"
        make_score = functools.partial(make_data.reference_scorer, ds, name)
    else:
        ckpt, cfg, ds = open_run(args.run, args.data_path)
        model = train.build_model(cfg, ds)
        try:
            epoch = train.load_weights(model, ckpt)
        except SystemExit as err:                       # train.py's one-line "error: ..." messages
            raise DataError(str(err).removeprefix("error: ")) from None
        name, source = cfg.model_name, f"{ckpt} ({cfg.model_name}, epoch {epoch})"
        make_score = model.eval().scorer
    split = ds.val if args.split == "val" else ds.test
    print(f"{source} on {Path(ds.path)}, {args.split} split, {len(split)} lines")
    with torch.no_grad():
        score = make_score()
        reference = UserPopularity(ds.train, ds.graph).scorer()
        print(report(name, by_kind(ds, split, score, args.k), args.k))
        print(report("userpop", by_kind(ds, split, reference, args.k), args.k))
        print(f"{name}: Recall@{args.k} with each line's video replaced (seed {args.seed})")
        for swap, recall in swapped_recall(ds, split, score, args.k, args.seed).items():
            print(f"  {swap:28s} {recall:.4f}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
