"""Ranking evaluation of hashtag recommendation (SPEC.md §5).

Every validation / test line is one (user, new micro-video) query. Its candidates are the line's
N fixed negative hashtags followed by its k positive hashtags; a model scores all of them and the
metrics below are computed from the resulting ranking, then averaged over lines:

* Precision@K = hits / K
* Recall@K    = hits / k
* Hit@K       = 1[hits > 0]  (the paper's "accuracy@K")
* NDCG@K      = sum_{positives at rank r <= K} 1/log2(r + 1) / sum_{r=1}^{min(k, K)} 1/log2(r + 1)

where hits is the number of positives among the top K candidates.

**Ties count against the positives.** Candidates are ranked by score (descending); among
candidates with an equal score, negatives come before positives, and positives keep their column
order. A positive's rank is therefore 1 + #(valid candidates with a strictly greater score)
+ #(valid negatives with an equal score) + #(valid positives with an equal score in an earlier
column). The order among equal-scored positives changes none of the metrics (they occupy the same
set of ranks either way), and a constant scorer gets 0 on every metric whenever N >= K.

Candidate matrices are padded to the longest positive list of a batch; padding is marked False in a
validity mask and never counts as a hit nor outranks a real candidate.

Everything here is a pure function and vectorised over lines: a candidate matrix, a validity mask,
for every positive a count of the candidates ranked ahead of it (no sort: only positives can be
hits), a sum of hits per line. Only the few cut-offs K are looped over.

Shape legend: L lines of a split, B lines of a batch, N negatives per line, K_max the largest
number of positives in the batch, C = N + K_max candidates, Q positives in the batch, W = max(ks)
ranks looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm import tqdm

if TYPE_CHECKING:
    from data_load import Split

METRICS = ("precision", "recall", "ndcg", "hit")
"""Metric names, in the order :func:`format_table` prints them; keys are ``f"{name}@{K}"``."""

_ROW_LABELS = {"precision": "P", "recall": "R", "ndcg": "NDCG", "hit": "Hit"}


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks: expected a non-empty sequence of positive ints, got {ks!r}")
    return ks


def rank_metrics(
    scores: Tensor,
    pos_mask: Tensor,
    valid_mask: Tensor,
    ks: Sequence[int],
) -> dict[str, Tensor]:
    r"""Per-line Precision, Recall, NDCG and Hit at every cut-off in ``ks``.

    Counts, for every positive, the valid candidates ranked ahead of it by score, breaking ties
    against the positives (see the module docstring); a positive of rank r <= K is a hit at K.

    Args:
        scores (Tensor): candidate scores, any floating dtype. Scores of padding are ignored
            (they may be anything, NaN included).
        pos_mask (Tensor): True where the candidate is a positive of its line.
        valid_mask (Tensor): True for real candidates, False for padding. A padding slot is never
            a positive, whatever ``pos_mask`` says there.
        ks (Sequence[int]): cut-offs K >= 1. K may exceed C: the missing ranks are empty, so
            Precision@K = hits / K still divides by K.

    Returns:
        dict[str, Tensor]: ``{"precision@K", "recall@K", "ndcg@K", "hit@K"}`` for every K, each a
        float32 tensor of shape [B] on the device of ``scores``.

    Raises:
        ValueError: on mismatched shapes, a non-floating or non-bool input, NaN in a valid score,
            a line without any valid positive, or a bad ``ks``.

    Shapes:
        - **input:** scores [B, C], pos_mask [B, C], valid_mask [B, C]
        - **output:** dict of [B]
    """
    ks = _check_ks(ks)
    if scores.dim() != 2 or pos_mask.shape != scores.shape or valid_mask.shape != scores.shape:
        raise ValueError(
            "rank_metrics: expected scores, pos_mask and valid_mask of one shape [B, C], got "
            f"{tuple(scores.shape)}, {tuple(pos_mask.shape)}, {tuple(valid_mask.shape)}"
        )
    if not scores.is_floating_point():
        raise ValueError(f"rank_metrics: expected floating scores, got {scores.dtype}")
    if pos_mask.dtype != torch.bool or valid_mask.dtype != torch.bool:
        raise ValueError(f"rank_metrics: expected bool masks, got {pos_mask.dtype} and {valid_mask.dtype}")
    if (torch.isnan(scores) & valid_mask).any():
        raise ValueError("rank_metrics: NaN in the scores of valid candidates")
    pos = pos_mask & valid_mask  # [B, C]
    num_pos = pos.sum(dim=1)  # [B] k of each line
    if (num_pos == 0).any():
        line = int(torch.nonzero(num_pos == 0)[0])
        raise ValueError(f"rank_metrics: line {line} of the batch has no valid positive")

    width = max(ks)  # W: ranks looked at
    line, _, rank = positive_ranks(scores, pos_mask, valid_mask)  # [Q] every positive

    ranks = torch.arange(1, width + 1, device=scores.device, dtype=torch.float32)  # [W]
    discount = 1.0 / torch.log2(ranks + 1.0)  # [W] 1/log2(r+1)
    ideal = torch.cumsum(discount, dim=0)  # [W] ideal DCG with r positives on top, r = 1..W
    gain = discount[rank.clamp(max=width) - 1]  # [Q] 1/log2(rank+1) where rank <= W
    num_pos_f = num_pos.float()  # [B]

    out: dict[str, Tensor] = {}
    for k in ks:
        in_top = (rank <= k).float()  # [Q]
        hits = torch.zeros_like(num_pos_f).index_add_(0, line, in_top)  # [B]
        dcg = torch.zeros_like(num_pos_f).index_add_(0, line, in_top * gain)  # [B]
        idcg = ideal[torch.clamp(num_pos, max=k) - 1]  # [B] sum_{r<=min(k_line, K)} 1/log2(r+1)
        out[f"precision@{k}"] = hits / k
        out[f"recall@{k}"] = hits / num_pos_f
        out[f"ndcg@{k}"] = dcg / idcg
        out[f"hit@{k}"] = (hits > 0).float()
    return out


def positive_ranks(scores: Tensor, pos_mask: Tensor, valid_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The rank of every valid positive, by line then column: ``(line [Q], col [Q], rank [Q])``.

    A rank is counted, not sorted for: 1 + #(valid candidates with a greater score) + #(valid negatives
    with an equal score) + #(positives with an equal score in an earlier column). Only positives can be
    hits, and there are few of them per line. Shapes of the inputs as in :func:`rank_metrics`.
    """
    pos = pos_mask & valid_mask  # [B, C]
    line, col = pos.nonzero(as_tuple=True)  # [Q]
    rows = scores[line]  # [Q, C] the scores of its line
    own = scores[line, col].unsqueeze(1)  # [Q, 1]
    earlier = torch.arange(scores.shape[1], device=scores.device) < col.unsqueeze(1)  # [Q, C]
    tie_wins = valid_mask[line] & (~pos[line] | earlier)  # [Q, C] valid negatives, earlier positives
    ahead = ((rows > own) & valid_mask[line]) | ((rows == own) & tie_wins)  # [Q, C]
    return line, col, 1 + ahead.sum(dim=1)


def candidates(split: Split, lines: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Candidate matrix of some lines of a split: negatives, then positives padded with 0.

    Args:
        split (Split): a validation or test split (local hashtag ids, CSR positives).
        lines (Tensor): int64 indices of the lines, on the device of the split.

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``cand`` local hashtag ids, ``pos_mask`` (True on the k
        positives of each line), ``valid_mask`` (False on the padding after the positives).

    Shapes:
        - **input:** lines [B]
        - **output:** cand [B, C], pos_mask [B, C], valid_mask [B, C] with C = N + K_max
    """
    neg = split.negatives[lines]  # [B, N]
    start = split.pos_ptr[lines]  # [B]
    count = split.pos_ptr[lines + 1] - start  # [B] k of each line
    k_max = int(count.max()) if lines.numel() else 0
    offset = torch.arange(k_max, device=lines.device)  # [K_max]
    real = offset < count.unsqueeze(1)  # [B, K_max] True on a line's first k slots
    where = torch.where(real, start.unsqueeze(1) + offset, 0)  # [B, K_max] index into pos
    positives = split.pos[where].masked_fill(~real, 0)  # [B, K_max]
    cand = torch.cat([neg, positives], dim=1)  # [B, N + K_max]
    is_neg = torch.zeros_like(neg, dtype=torch.bool)  # [B, N]
    pos_mask = torch.cat([is_neg, real], dim=1)  # [B, C]
    valid_mask = torch.cat([~is_neg, real], dim=1)  # [B, C]
    return cand, pos_mask, valid_mask


def evaluate(
    split: Split,
    score_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    ks: Sequence[int] = (5, 10),
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    per_line: bool = False,
    progress: bool = False,
) -> dict:
    """Score every line of a split and average the ranking metrics over lines (SPEC §5).

    ``score_fn`` is called under :func:`torch.no_grad`; putting a model in ``eval()`` mode is the
    caller's job. Lines are walked in order, ``batch_size`` at a time, so the result does not
    depend on the batch size.

    Args:
        split (Split): a validation or test split, on the CPU.
        score_fn (Callable): ``score_fn(users [B], videos [B], cand [B, C]) -> scores [B, C]``, all
            local ids on ``device``. Scores of padded candidates are ignored.
        ks (Sequence[int], optional): cut-offs K. (default: ``(5, 10)``)
        batch_size (int, optional): lines per call of ``score_fn``. (default: ``1024``)
        device (str or torch.device, optional): where index tensors are sent and metrics are
            computed. (default: ``"cpu"``)
        per_line (bool, optional): also return every line's values, for paired significance
            tests. (default: ``False``)
        progress (bool, optional): show a tqdm bar over batches. (default: ``False``)

    Returns:
        dict: ``{"precision@K": float, "recall@K": float, "ndcg@K": float, "hit@K": float, ...}``
        averaged over the L lines; with ``per_line=True`` also ``"per_line"``: a dict with the same
        metric names mapping to float32 CPU tensors of shape [L].

    Raises:
        ValueError: on an empty split, a bad ``batch_size`` or ``ks``, or scores whose shape is
            not that of ``cand``.
    """
    ks = _check_ks(ks)
    num_lines = len(split)
    if num_lines == 0:
        raise ValueError("evaluate: the split has no lines")
    if batch_size < 1:
        raise ValueError(f"evaluate: expected batch_size >= 1, got {batch_size}")
    names = [f"{name}@{k}" for k in ks for name in METRICS]
    values = {name: torch.empty(num_lines) for name in names}  # name -> [L]
    starts = range(0, num_lines, batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="evaluate", unit="batch", disable=not progress):
            lines = torch.arange(start, min(start + batch_size, num_lines))  # [B]
            cand, pos_mask, valid_mask = candidates(split, lines)  # [B, C] each
            users = split.users[lines].to(device)  # [B]
            videos = split.videos[lines].to(device)  # [B]
            cand = cand.to(device)
            scores = score_fn(users, videos, cand)  # [B, C]
            if scores.shape != cand.shape:
                raise ValueError(
                    f"evaluate: score_fn returned shape {tuple(scores.shape)}, "
                    f"expected {tuple(cand.shape)} (the shape of cand)"
                )
            batch = rank_metrics(scores, pos_mask.to(device), valid_mask.to(device), ks)
            for name in names:
                values[name][lines] = batch[name].cpu()
    result: dict = {name: values[name].double().mean().item() for name in names}
    if per_line:
        result["per_line"] = values
    return result


def format_table(metrics: dict, ks: Sequence[int]) -> str:
    """Fixed-width text table of averaged metrics: rows P / R / NDCG / Hit, one column per K.

    Args:
        metrics (dict): the output of :func:`evaluate` (``"per_line"`` is ignored).
        ks (Sequence[int]): the cut-offs to show, in column order.

    Returns:
        str: e.g. for ``ks=(5, 10)``::

                       @5      @10
            P      0.1200   0.0800
            R      0.3100   0.4000
            NDCG   0.2900   0.3300
            Hit    0.4700   0.5600
    """
    ks = _check_ks(ks)
    header = " " * 4 + "".join(f"{'@' + str(k):>9}" for k in ks)
    rows = [
        f"{_ROW_LABELS[name]:<4}" + "".join(f"{float(metrics[f'{name}@{k}']):>9.4f}" for k in ks)
        for name in METRICS
    ]
    return "\n".join([header, *rows])
