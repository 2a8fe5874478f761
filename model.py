"""GCN-PHR (SPEC §3), its homogeneous-graph ablation (SPEC §3.2), the release's own architecture
(SPEC §3.1) and their shared configuration.

The model only composes: message passing lives in ``gcn_layers.py``, the optimiser and the loop in
``train.py``. Every ranker in the project (``model.py`` and ``baselines.py``) follows one interface,
:class:`Ranker`: ``loss(users, videos, pos, neg, rows)`` for training and ``scorer()`` for
evaluation, which returns ``score(users, videos, cand)`` with any graph propagation done once.

Shape legend: U users, H hashtags, V videos, P pairs, E pair–video edges, R training rows,
B batch (rows or lines), C candidates per line, F feature dim, d latent dim (``dim_latent``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch_geometric.nn import GCNConv

from data_load import IdSpace, PairGraph
from gcn_layers import NEGATIVE_SLOPE, PairIndex, PHRConv, ReleasedConv, pair_norm
from sampling import PairSampler

ScoreFn = Callable[[Tensor, Tensor, Tensor], Tensor]
AllScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``(users [B], videos [B]) -> scores [B, H]`` of every hashtag (:meth:`Ranker.all_scorer`)."""


MULTI_NEGATIVE = ("gcn_phr", "released", "content", "mf")  # BPR models whose loss takes [B, K] negatives
PAPER_BASELINE_NAMES = ("utm", "contagnet", "csmn", "ushm")  # baselines.py; [B, K] negatives with --loss bpr
# --neg_per_row 0: the most (user, hashtag, d) elements of the hashtag side one step keeps for its backward;
# beyond it the batch's users are taken in groups and each group's scores are recomputed in the backward
ALL_TAGS_MAX_ELEMENTS = 2 ** 26


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    """Every hyperparameter of a run. ``train.py`` builds its command line from these fields.

    The names of the release's flags (SPEC §7) are kept; defaults are the release's values.
    """

    # ---- the release's command line (SPEC §7) ----
    model_name: str = _opt("gcn_phr", "which ranker to train", choices=(
        "gcn_phr", "released", "pop", "userpop", "content", "mf", "knn", "utm", "contagnet", "csmn", "ushm"))
    data_path: str = _opt("", "dataset directory (project format, or legacy with --allow_pickle); "
                          "empty: build and use the synthetic 'small' preset under data/")
    l_r: float = _opt(1e-3, "Adam learning rate")
    weight_decay: float = _opt(0.1, "Adam weight decay (coupled L2, as torch.optim.Adam; the loss is "
                               "summed over the batch, so this is the release's strength)")
    batch_size: int = _opt(1024, "training rows per step")
    dim_latent: int = _opt(64, "latent size d")
    num_workers: int = _opt(30, "CPU threads for tensor ops, capped at the number of cores "
                            "(the release's DataLoader workers; batches here are index tensors)")
    aggr_mode: str = _opt("mean", "AGG over a node's pairs", choices=("mean", "max", "add"))
    scoring_mode: str = _opt("cat", "user-specific scoring: cat = 2-layer MLP on [x ‖ u], "
                             "fully_con = one fully connected layer", choices=("cat", "fully_con"))
    num_epoch: int = _opt(50, "maximum number of epochs")
    num_heads: int = _opt(1, "GAT heads of the 'released' variant")
    PATH_weight_load: str = _opt("", "load model weights from this checkpoint before training")
    PATH_weight_save: str = _opt("", "also save the best weights to this path")
    # ---- additions ----
    num_layers: int = _opt(2, "aggregation layers L")
    seed: int = _opt(0, "seed of every random source (init, negatives, batch order)")
    topk: str = _opt("5,10", "comma-separated cut-offs K of the metrics")
    patience: int = _opt(10, "stop after this many epochs without a better validation Recall@10 "
                         "(0: never)")
    eval_batch_size: int = _opt(1024, "val/test lines scored at once")
    amp: bool = _opt(False, "bf16 autocast of the training step, meant for CUDA (the dense products run in bf16, "
                     "the sparse graph products in float32); evaluation stays in float32")
    # ---- ablations (SPEC §3.2) ----
    attention: str = _opt("on", "GCN-PHR's attention over V(p): on = learned, off = uniform weights",
                          choices=("on", "off"))
    messages: str = _opt("both", "GCN-PHR's messages: both; video = no hashtag–user messages (W_t dropped); "
                         "hashtag = no video messages (W_m dropped)", choices=("both", "video", "hashtag"))
    graph: str = _opt("pairs", "GCN-PHR's graph: pairs = the user–hashtag pair graph; homogeneous = one "
                      "plain GCN over all user–video, hashtag–video and user–hashtag edges",
                      choices=("pairs", "homogeneous"))
    # ---- learning knobs; defaults are the faithful values (README: 'Does it learn?') ----
    neg_pop_share: float = _opt(0.0, "share of training negatives drawn in proportion to hashtag popularity; "
                                "the rest are uniform over training hashtags (0 = the paper's uniform draw)")
    neg_user_share: float = _opt(0.0, "share of training negatives drawn from the hashtags the row's user used in "
                                 "training (uniform over her distinct hashtags; never those of the row's video), to "
                                 "ask which of her own hashtags fit this video (0 = the paper's draw; with "
                                 "--neg_per_row 0 the share enters the row's exact expectation; docs/RESULTS.md)")
    hide_own: str = _opt("none", "what a training batch hides from its own message passing: none (the "
                         "release), rows (the batch's rows), videos (every edge of the batch's videos, so a "
                         "training video is as new to the graph as a test video)",
                         choices=("none", "rows", "videos"))
    neg_per_row: int = _opt(1, "negatives drawn per training row each epoch; BPR averages a row's terms "
                            "(1 = the paper; the paper's baselines take more with --loss bpr only); more "
                            "negatives show each user the popular hashtags it does not use more often, "
                            "without changing their distribution. 0 = every hashtag (GCN-PHR and released): "
                            "a row's term is then the exact expectation of BPR over the negative distribution, "
                            "the paper's loss without sampling noise")
    dropout: float = _opt(0.0, "dropout on node and video representations before scoring")
    norm: str = _opt("none", "normalisation of GCN-PHR's user and hashtag representations after every "
                     "aggregation layer: none (the paper); pair = PairNorm (centre over the nodes of each type, "
                     "rescale to unit mean row norm), against the collapse of mean aggregation",
                     choices=("none", "pair"))
    pair_weight: str = _opt("pair", "weight of a user-hashtag pair in GCN-PHR's mean (or add) aggregation: pair = one "
                            "per pair (the paper); videos = its number of training videos, so the aggregation runs "
                            "over a node's training rows and a hashtag the user gave ten videos weighs ten times "
                            "one she gave once", choices=("pair", "videos"))
    ema_decay: float = _opt(0.0, "exponential moving average of the weights: a <- d a + (1 - d) w after every "
                            "optimiser step, from the weights after the first; validation, best.pt and test use "
                            "the average, training goes on with the weights themselves. 0 = off (the paper); "
                            "0.99 averages over about 100 steps")
    # ---- the paper's baselines (SPEC §4; baselines.py) ----
    loss: str = _opt("native", "training loss: native = the model's own paper's (BPR for GCN-PHR and the "
                     "reference rankers; UTM WARP, ConTagNet multi-label sigmoid cross-entropy, CSMN sequence "
                     "cross-entropy, USHM softmax cross-entropy), bpr = BPR on the shared (h+, h-) rows; "
                     "softmax (GCN-PHR and released) = cross-entropy of the positive against itself and the "
                     "row's negatives, every hashtag not on the video with --neg_per_row 0 (with one negative "
                     "it is BPR; docs/RESULTS.md)", choices=("native", "bpr", "softmax"))
    baseline_size: str = _opt("paper", "widths of ConTagNet and CSMN: paper = the original papers', "
                              "small = a CPU setting (see their docstrings); UTM and USHM are the same "
                              "in both", choices=("paper", "small"))
    # ---- the neighbour-voting reference ranker (--model_name knn; defaults chosen on small's validation split) ----
    knn_temperature: float = _opt(0.05, "knn: temperature of the softmax over feature cosines to training videos")
    knn_user_weight: float = _opt(1.0, "knn: weight of the user's own hashtag frequencies")
    knn_global_weight: float = _opt(0.3, "knn: weight of the votes of everyone's training videos (the user's own "
                                    "videos always vote with weight 1)")
    # ---- scale-out (README: 'Scaling out') ----
    num_neigh: int = _opt(0, "sampled-subgraph training of GCN-PHR: each mini-batch propagates only through the "
                          "pairs reachable from its users and hashtags, at most this many sampled pairs per node and "
                          "layer (0: the whole graph, the release's final behaviour); evaluation uses the whole graph")

    @property
    def ks(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.topk.split(","))

    def validate(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"--{f.name}: expected one of {choices}, got {getattr(self, f.name)!r}")
        positive = ("l_r", "batch_size", "dim_latent", "num_epoch", "num_layers", "num_heads",
                    "eval_batch_size", "num_workers")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name}: expected a positive value, got {getattr(self, name)}")
        if self.knn_temperature <= 0 or self.knn_user_weight < 0 or self.knn_global_weight < 0:
            raise ValueError(f"--knn_temperature: expected > 0, --knn_user_weight and --knn_global_weight ≥ 0, got "
                             f"{self.knn_temperature}, {self.knn_user_weight}, {self.knn_global_weight}")
        if self.weight_decay < 0 or self.patience < 0 or not 0 <= self.dropout < 1 \
                or not 0 <= self.neg_pop_share <= 1 or not 0 <= self.neg_user_share <= 1 \
                or not 0 <= self.ema_decay < 1:
            raise ValueError("--weight_decay and --patience must be ≥ 0, --dropout and --ema_decay in [0, 1), "
                             "--neg_pop_share and --neg_user_share in [0, 1]")
        ablated = [f"--{f.name} {getattr(self, f.name)}" for f in fields(self)
                   if f.name in ("attention", "messages", "graph") and getattr(self, f.name) != f.default]
        if ablated and self.model_name != "gcn_phr":
            raise ValueError(f"{ablated[0]}: an ablation of GCN-PHR, expected --model_name gcn_phr, "
                             f"got {self.model_name!r}")
        if self.norm != "none" and (self.model_name != "gcn_phr" or self.graph != "pairs"):
            raise ValueError(f"--norm {self.norm}: normalises GCN-PHR's pair-graph layers, expected "
                             f"--model_name gcn_phr --graph pairs, got {self.model_name!r}, {self.graph!r}")
        if self.pair_weight != "pair" and (self.model_name != "gcn_phr" or self.graph != "pairs"
                                           or self.aggr_mode == "max" or self.num_neigh):
            raise ValueError(f"--pair_weight {self.pair_weight}: weighs the pairs of GCN-PHR's mean or add aggregation "
                             f"on the whole graph, expected --model_name gcn_phr --graph pairs --aggr_mode mean or add "
                             f"--num_neigh 0, got {self.model_name!r}, {self.graph!r}, {self.aggr_mode!r}, "
                             f"{self.num_neigh}")
        if self.neg_per_row < 0:
            raise ValueError(f"--neg_per_row: expected a positive count or 0 (every hashtag), got {self.neg_per_row}")
        if self.neg_per_row == 0 and (self.model_name not in ("gcn_phr", "released") or self.num_neigh):
            raise ValueError("--neg_per_row 0 (every hashtag as negative): expected --model_name gcn_phr or "
                             f"released, on the whole graph (--num_neigh 0); got {self.model_name!r}, "
                             f"--num_neigh {self.num_neigh}")
        many = self.model_name in MULTI_NEGATIVE or (self.model_name in PAPER_BASELINE_NAMES and self.loss == "bpr")
        if self.neg_per_row > 1 and not many:
            raise ValueError(f"--neg_per_row {self.neg_per_row}: expected 1 for {self.model_name!r} with its "
                             f"native loss (more negatives per row are for the BPR models "
                             f"{', '.join(MULTI_NEGATIVE)} and for a paper baseline with --loss bpr)")
        if self.loss == "softmax" and (self.model_name not in ("gcn_phr", "released")
                                       or self.neg_pop_share or self.neg_user_share):
            raise ValueError(f"--loss softmax: a loss of GCN-PHR and released over uniform negatives, expected "
                             f"--model_name gcn_phr or released, --neg_pop_share 0 --neg_user_share 0; got "
                             f"{self.model_name!r}, {self.neg_pop_share}, {self.neg_user_share}")
        if self.hide_own != "none" and self.model_name != "gcn_phr":
            raise ValueError(f"--hide_own {self.hide_own}: hides edges of GCN-PHR's graph, expected "
                             f"--model_name gcn_phr, got {self.model_name!r}")
        if self.num_neigh < 0:
            raise ValueError(f"--num_neigh: expected 0 (the whole graph) or a positive count, got {self.num_neigh}")
        if self.num_neigh and (self.model_name != "gcn_phr" or self.graph != "pairs" or self.norm != "none"):
            raise ValueError(f"--num_neigh {self.num_neigh}: samples GCN-PHR's pair graph, expected --model_name "
                             f"gcn_phr --graph pairs --norm none, got {self.model_name!r}, {self.graph!r}, "
                             f"{self.norm!r}")
        if self.graph == "homogeneous" and len(ablated) > 1:
            raise ValueError(f"{ablated[0]}: the homogeneous graph is a plain GCN without attention or "
                             "message terms; leave --attention on and --messages both")
        try:
            ks = self.ks
        except ValueError:
            raise ValueError(f"--topk: expected comma-separated integers, got {self.topk!r}") from None
        if not ks or min(ks) <= 0 or 10 not in ks:
            raise ValueError(f"--topk: expected positive cut-offs including 10 (model selection uses "
                             f"Recall@10), got {self.topk!r}")


class Ranker(nn.Module):
    """What ``train.py`` and ``evaluation.py`` need from any model."""

    trainable = True

    def loss(self, users: Tensor, videos: Tensor, pos: Tensor, neg: Tensor, rows: Tensor) -> Tensor:
        """The training loss summed over the batch: BPR (SPEC §3; or ``--loss softmax``) for GCN-PHR, each
        baseline's own loss or BPR (``Config.loss``) for the baselines. ``rows`` are the batch's training-row ids."""
        raise NotImplementedError

    def scorer(self) -> ScoreFn:
        """A function ``(users [B], videos [B], cand [B, C]) -> scores [B, C]`` for evaluation."""
        raise NotImplementedError

    def all_scorer(self) -> AllScoreFn | None:
        """A function ``(users [B], videos [B]) -> scores [B, H]`` of every hashtag, for ranking them all
        (``recommend.py``): the scores of :meth:`scorer` with every hashtag as candidate, computed faster.
        None (the default): no faster way, use :meth:`scorer`."""
        return None


def negative_distribution(row_tags: Tensor, num_hashtag: int, pop_share: float) -> Tensor:
    """``[H]`` float64 probabilities the training negatives are drawn with: uniform over the hashtags of the
    training rows ``row_tags`` ``[R]`` (the paper), mixed with a ``pop_share`` drawn in proportion to their
    training counts (``--neg_pop_share``)."""
    count = torch.bincount(row_tags, minlength=num_hashtag).double()            # [H]
    seen = (count > 0).double()
    return (1 - pop_share) * seen / seen.sum() + pop_share * count / count.sum()


def _contains(sorted_keys: Tensor, keys: Tensor) -> Tensor:
    """Whether each of ``keys`` (any shape) is in the sorted 1-D ``sorted_keys``: a boolean of ``keys``' shape."""
    at = torch.searchsorted(sorted_keys, keys).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[at] == keys


def bpr_loss(pos_score: Tensor, neg_score: Tensor) -> Tensor:
    """−Σ ln σ(s⁺ − s⁻), with the numerically stable log-sigmoid (SPEC §3), summed over the rows.

    Shapes: pos_score [B], neg_score [B] (one negative per row, the paper) or [B, K] (``--neg_per_row K``:
    the K terms of a row are averaged, so the loss keeps the scale the weight decay was set for).
    """
    diff = pos_score.unsqueeze(-1) - neg_score if neg_score.dim() == 2 else pos_score - neg_score
    diff = diff.to(torch.promote_types(diff.dtype, torch.float32))                      # float32 under autocast
    terms = -F.logsigmoid(diff)
    return (terms.mean(-1) if neg_score.dim() == 2 else terms).sum()


def softmax_loss(pos_score: Tensor, neg_score: Tensor) -> Tensor:
    r"""−Σ ln softmax: each row's cross-entropy of its positive against itself and its negatives,
    :math:`\ln(e^{s^+} + \sum_k e^{s^-_k}) - s^+`, summed over the rows (``--loss softmax``). With one negative
    it equals :func:`bpr_loss`.

    Shapes: pos_score [B], neg_score [B] or [B, K] → scalar
    """
    both = torch.cat([pos_score.unsqueeze(-1), neg_score.view(pos_score.size(0), -1)], 1)   # [B, 1 + K]
    both = both.to(torch.promote_types(both.dtype, torch.float32))
    return (torch.logsumexp(both, 1) - both[:, 0]).sum()


class UserScorer(nn.Module):
    r"""User-specific representations and score (SPEC §3):
    :math:`s(u, v, h) = \bar{\mathbf{v}}^\top \bar{\mathbf{h}}`.

    ``cat``: :math:`\bar{\mathbf{v}} = \mathrm{MLP}_v([\mathbf{v} \| \mathbf{u}])`,
    :math:`\bar{\mathbf{h}} = \mathrm{MLP}_h([\mathbf{h} \| \mathbf{u}])`, MLP = Linear(2d→d), LReLU,
    Linear(d→d), LReLU. ``fully_con``: one Linear(2d→d) and LReLU per side.

    The first Linear of the hashtag side is applied as ``W[:, :d] h + W[:, d:] u + b``, which is the
    same map as on the concatenation; it lets evaluation project every hashtag once and every line
    once instead of every (line, candidate) pair.

    Args:
        dim (int): latent size d.
        mode (str): ``"cat"`` or ``"fully_con"``.

    Shapes:
        user [B, d], video [B, d], tag [B, d] or [B, C, d] → [B] or [B, C]
    """

    def __init__(self, dim: int, mode: str = "cat", dropout: float = 0.0) -> None:
        super().__init__()
        self.dim, self.mode = dim, mode
        self.v1 = nn.Linear(2 * dim, dim)
        self.h1 = nn.Linear(2 * dim, dim)
        self.v2 = nn.Linear(dim, dim) if mode == "cat" else None
        self.h2 = nn.Linear(dim, dim) if mode == "cat" else None
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.v1, self.h1, self.v2, self.h2):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def _tail(self, x: Tensor, second: nn.Linear | None) -> Tensor:
        x = F.leaky_relu(x, NEGATIVE_SLOPE)
        return x if second is None else F.leaky_relu(second(x), NEGATIVE_SLOPE)

    def tag_part(self, tag: Tensor) -> Tensor:
        """The hashtag half of the first hashtag-side layer, ``[*, d] -> [*, d]``."""
        return F.linear(self.drop(tag), self.h1.weight[:, : self.dim])

    def forward(self, user: Tensor, video: Tensor, tag: Tensor | None = None,
                tag_part: Tensor | None = None) -> Tensor:
        user, video = self.drop(user), self.drop(video)
        v_bar = self._tail(self.v1(torch.cat([video, user], dim=-1)), self.v2)   # [B, d]
        if tag_part is None:
            tag_part = self.tag_part(tag)                                       # [B, (C,) d]
        user_part = F.linear(user, self.h1.weight[:, self.dim:], self.h1.bias)  # [B, d]
        if tag_part.dim() == 3:
            user_part, v_bar = user_part.unsqueeze(1), v_bar.unsqueeze(1)       # [B, 1, d]
        h_bar = self._tail(tag_part + user_part, self.h2)                       # [B, (C,) d]
        return (v_bar * h_bar).sum(-1)                                          # [B, (C)]

    @torch.no_grad()
    def score_candidates(self, user: Tensor, video: Tensor, tag_part: Tensor, cand: Tensor,
                         chunk: int = 8) -> Tensor:
        """Evaluation path of :meth:`forward` (no gradient): ``forward(user, video, tag_part=tag_part[cand])``
        computed ``chunk`` lines at a time, in place, so the ``[chunk, C, d]`` intermediates stay in cache.

        Shapes: user [B, d], video [B, d], tag_part [H, d] (:meth:`tag_part` of every hashtag), cand [B, C]
        → [B, C]
        """
        user, video = self.drop(user), self.drop(video)
        v_bar = self._tail(self.v1(torch.cat([video, user], dim=-1)), self.v2)   # [B, d]
        user_part = F.linear(user, self.h1.weight[:, self.dim:], self.h1.bias)  # [B, d]
        second = None if self.h2 is None else self.h2.weight.t()                # [d, d]
        out = v_bar.new_empty(cand.shape)                                       # [B, C]
        for start in range(0, cand.size(0), chunk):
            lines = slice(start, start + chunk)
            b = cand[lines].size(0)
            h = tag_part.index_select(0, cand[lines].reshape(-1)).view(b, -1, self.dim)  # [b, C, d]
            F.leaky_relu(h.add_(user_part[lines].unsqueeze(1)), NEGATIVE_SLOPE, inplace=True)
            if second is not None:
                h = torch.addmm(self.h2.bias, h.view(-1, self.dim), second).view(b, -1, self.dim)
                F.leaky_relu(h, NEGATIVE_SLOPE, inplace=True)
            torch.bmm(h, v_bar[lines].unsqueeze(-1), out=out[lines].unsqueeze(-1))  # [b, C, 1]
        return out

    def video_side(self, user: Tensor, video: Tensor) -> Tensor:
        r""":math:`\bar{\mathbf{v}}`, the video side of the score: ``user [B, d], video [B, d] -> [B, d]``."""
        user, video = self.drop(user), self.drop(video)
        return self._tail(self.v1(torch.cat([video, user], dim=-1)), self.v2)

    def tag_side(self, user: Tensor, tag_part: Tensor) -> Tensor:
        r""":math:`\bar{\mathbf{h}}` of one user with every hashtag of ``tag_part``, the hashtag side of the
        score: it depends on the user, not on the video.

        Shapes: user [d], tag_part [H, d] (:meth:`tag_part` of the hashtags) → [H, d]
        """
        user_part = F.linear(self.drop(user), self.h1.weight[:, self.dim:], self.h1.bias)   # [d]
        h = F.leaky_relu(tag_part + user_part, NEGATIVE_SLOPE, inplace=True)                # [H, d]
        if self.h2 is not None:
            h = F.leaky_relu(torch.addmm(self.h2.bias, h, self.h2.weight.t()), NEGATIVE_SLOPE, inplace=True)
        return h

    @torch.no_grad()
    def score_all(self, user: Tensor, video: Tensor, of_line: Tensor, tag_part: Tensor) -> Tensor:
        """Evaluation path of :meth:`forward` with every hashtag as candidate: :meth:`all_tags` without
        gradient."""
        return self.all_tags(user, video, of_line, tag_part)

    def all_tags(self, user: Tensor, video: Tensor, of_line: Tensor, tag_part: Tensor) -> Tensor:
        """:meth:`forward` with every hashtag as candidate: the hashtag side (:meth:`tag_side`) is computed
        once per distinct user, then each user's lines are scored by one matrix product ``v̄ [n, d] @ h̄ᵀ [d, H]``.

        Shapes: user [G, d] (the distinct users), video [B, d], of_line [B] (each line's row of ``user``),
        tag_part [H, d] (:meth:`tag_part` of every hashtag) → [B, H]
        """
        v_bar = self.video_side(user[of_line], video)                           # [B, d]
        order = torch.argsort(of_line, stable=True)                             # lines grouped by user
        counts = torch.bincount(of_line, minlength=user.size(0)).tolist()       # [G]
        parts = [v_bar.index_select(0, lines) @ self.tag_side(row, tag_part).t()   # [n, H], h̄ once per user
                 for row, lines in zip(user, torch.split(order, counts)) if lines.numel()]
        if not parts:
            return v_bar.new_empty(0, tag_part.size(0))
        return torch.cat(parts)[torch.argsort(order)]                           # [B, H] back in line order

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.dim}, mode={self.mode!r})"


class Reps(NamedTuple):
    """Propagated representations: users ``[U, d]``, hashtags ``[H, d]``, videos ``[V, d]``."""

    user: Tensor
    tag: Tensor
    video: Tensor


class _GraphRanker(Ranker):
    """Shared parts of GCN-PHR and the released variant: id embeddings, the video projection,
    the fixed graph and features as non-persistent buffers, the scorer, the loss (BPR or ``--loss softmax``). A
    subclass builds its layers as ``self.convs`` and then calls :meth:`reset_parameters`."""

    def __init__(self, cfg: Config, graph: PairGraph, features: Tensor) -> None:
        super().__init__()
        d = cfg.dim_latent
        self.cfg = cfg
        self.user_emb = nn.Parameter(torch.empty(graph.num_user, d))   # x_u^0, [U, d]
        self.tag_emb = nn.Parameter(torch.empty(graph.num_hashtag, d))  # x_h^0, [H, d]
        self.video_proj = nn.Linear(features.size(1), d)               # z_v = LReLU(W_f f_v + b_f)
        self.scoring = UserScorer(d, cfg.scoring_mode, cfg.dropout)
        self.register_buffer("features", features, persistent=False)   # [V, F]
        for f in fields(graph):
            value = getattr(graph, f.name)
            if isinstance(value, Tensor):
                self.register_buffer(f"g_{f.name}", value, persistent=False)
        self._graph_shape = (graph.num_user, graph.num_hashtag, graph.num_video)
        row_video = torch.empty_like(graph.row_pair)
        row_video[graph.pv_row] = graph.pv_video
        self.register_buffer("row_video", row_video, persistent=False)  # [R] video of each training row
        if cfg.neg_per_row == 0:                                        # every hashtag as negative
            row_tag = graph.pair_hashtag[graph.row_pair]                # [R]
            prob = negative_distribution(row_tag, graph.num_hashtag, cfg.neg_pop_share)   # as train.py draws
            self.register_buffer("neg_prob", prob.float(), persistent=False)   # [H]
            keys = torch.unique(row_video * graph.num_hashtag + row_tag)       # sorted (video, hashtag) keys
            self.register_buffer("video_tag_keys", keys, persistent=False)
            if cfg.neg_user_share > 0:                                  # pairs are sorted by (user, hashtag)
                keys = graph.pair_user * graph.num_hashtag + graph.pair_hashtag
                self.register_buffer("user_tag_keys", keys, persistent=False)   # [P] sorted (user, hashtag) keys

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.tag_emb)
        nn.init.xavier_uniform_(self.video_proj.weight)
        nn.init.zeros_(self.video_proj.bias)
        self.scoring.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()

    @property
    def graph(self) -> PairGraph:
        """The pair graph, on the device of the module's buffers."""
        tensors = {f.name: getattr(self, f"g_{f.name}") for f in fields(PairGraph)
                   if hasattr(self, f"g_{f.name}")}
        return PairGraph(*self._graph_shape, **tensors)

    def video_repr(self) -> Tensor:
        """``[V, d]`` z_v for every video (train, val and test alike)."""
        return F.leaky_relu(self.video_proj(self.features), NEGATIVE_SLOPE)

    def propagate(self, hidden_rows: Tensor | None = None) -> Reps:
        raise NotImplementedError

    def hidden_rows(self, videos: Tensor, rows: Tensor) -> Tensor | None:
        """The training rows a batch hides from its own propagation (``Config.hide_own``)."""
        if self.cfg.hide_own == "rows":
            return rows
        if self.cfg.hide_own == "videos":
            hidden = torch.zeros(self._graph_shape[2], dtype=torch.bool, device=videos.device)
            hidden[videos] = True                                           # [V]
            return hidden[self.row_video].nonzero().squeeze(1)              # [B'] every row of those videos
        return None

    def batch_reps(self, users: Tensor, tags: Tensor, hidden_rows: Tensor | None) -> Reps:
        """The representations a training batch needs (``users`` [B], ``tags`` [2B] rows are read); the
        whole graph is propagated unless a model can compute only those rows."""
        return self.propagate(hidden_rows)

    def loss(self, users, videos, pos, neg, rows):
        if self.cfg.neg_per_row == 0:
            return self.loss_all(users, videos, pos, rows)
        reps = self.batch_reps(users, torch.cat([pos, neg.flatten()]), self.hidden_rows(videos, rows))
        u, v = reps.user[users], reps.video[videos]                    # [B, d]
        s_pos = self.scoring(u, v, reps.tag[pos])                       # [B]
        s_neg = self.scoring(u, v, reps.tag[neg])                       # [B] or [B, K]
        return self.pair_loss(s_pos, s_neg)

    def pair_loss(self, pos_score: Tensor, neg_score: Tensor) -> Tensor:
        """BPR (the paper), or the softmax cross-entropy with ``--loss softmax``; summed over the rows."""
        return (softmax_loss if self.cfg.loss == "softmax" else bpr_loss)(pos_score, neg_score)

    def loss_all(self, users: Tensor, videos: Tensor, pos: Tensor, rows: Tensor,
                 max_elements: int = ALL_TAGS_MAX_ELEMENTS) -> Tensor:
        r"""BPR against every hashtag (``--neg_per_row 0``): a row's term is
        :math:`\sum_h q_h \, [-\ln\sigma(s^+ - s_h)] / \sum_h q_h` over the hashtags not on the row's video,
        with q the distribution the sampler draws from (uniform over training hashtags, or with
        ``--neg_pop_share``): the expectation of the paper's one-negative term, without its sampling noise.
        With ``--neg_user_share`` s the weights are those of the sampler's mixture,
        :math:`(1 - s)\, q_h / \sum_g q_g + s\, [h \in O] / |O|` over the hashtags not on the video, O the
        row's user's training hashtags not on the video (s = 0 when O is empty, as the sampler falls back).
        With ``--loss softmax`` a row's term is :math:`\ln \sum_{h \in N \cup \{h^+\}} e^{s_h} - s^+`, N the
        training hashtags not on the video.

        Costs one score per (row, hashtag) and a ``[G, H, d]`` hashtag side for the G users of a batch. When
        G·H·d exceeds ``max_elements``, the users are taken in groups of at most ``max_elements / (H d)`` and
        each group is checkpointed (``torch.utils.checkpoint``): its hashtag side is recomputed in the
        backward instead of kept, so memory stays at one group's, for one more forward pass of the scorer.
        The loss and its gradients are the same up to float summation order.

        Shapes: users, videos, pos, rows [B] → scalar (summed over the rows)."""
        reps = self.propagate(self.hidden_rows(videos, rows))
        distinct, of_line = torch.unique(users, return_inverse=True)   # [G], [B]
        tag_part = self.scoring.tag_part(reps.tag)                      # [H, d]
        user, video = reps.user[distinct], reps.video[videos]           # [G, d], [B, d]
        group = max(1, max_elements // tag_part.numel())                # users per group
        if distinct.numel() <= group:
            return self._all_tag_terms(user, video, of_line, tag_part, users, videos, pos)
        order = torch.argsort(of_line, stable=True)                     # lines grouped by user
        ends = torch.bincount(of_line, minlength=distinct.numel()).cumsum(0).tolist()   # [G]
        total = video.new_zeros(())
        for first in range(0, distinct.numel(), group):
            last = min(first + group, distinct.numel())
            lines = order[(ends[first - 1] if first else 0): ends[last - 1]]            # lines of these users
            total = total + checkpoint(self._all_tag_terms, user[first:last], video[lines], of_line[lines] - first,
                                       tag_part, users[lines], videos[lines], pos[lines], use_reentrant=False)
        return total

    def _all_tag_terms(self, user: Tensor, video: Tensor, of_line: Tensor, tag_part: Tensor, users: Tensor,
                      videos: Tensor, pos: Tensor) -> Tensor:
        """The summed all-hashtag terms of :meth:`loss_all` for some lines.

        Shapes: user [G, d] (the lines' distinct users), video [B, d], of_line [B] (each line's row of
        ``user``), tag_part [H, d], users, videos, pos [B] → scalar"""
        scores = self.scoring.all_tags(user, video, of_line, tag_part)                     # [B, H]
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        every_tag = torch.arange(scores.size(1), device=videos.device)                     # [H]
        on_video = _contains(self.video_tag_keys, videos.unsqueeze(1) * scores.size(1) + every_tag)   # [B, H]
        weight = self.neg_prob.expand_as(scores).masked_fill(on_video, 0.0)                         # [B, H]
        if self.cfg.loss == "softmax":                  # the positive against itself and every negative
            kept = (weight > 0) | (every_tag == pos.unsqueeze(1))                                  # [B, H]
            logits = scores.masked_fill(~kept, float("-inf"))
            return (torch.logsumexp(logits, 1) - scores.gather(1, pos.unsqueeze(1)).squeeze(1)).sum()
        terms = -F.logsigmoid(scores.gather(1, pos.unsqueeze(1)) - scores)                          # [B, H]
        if not self.cfg.neg_user_share:
            return ((terms * weight).sum(1) / weight.sum(1).clamp_min(1e-12)).sum()
        weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-12)
        own = _contains(self.user_tag_keys, users.unsqueeze(1) * scores.size(1) + every_tag) & ~on_video  # [B, H]
        num_own = own.sum(1, keepdim=True)                                                          # [B, 1]
        share = self.cfg.neg_user_share * (num_own > 0)                                             # [B, 1]
        weight = (1 - share) * weight + share * own / num_own.clamp_min(1)
        return (terms * weight).sum()

    def scorer(self) -> ScoreFn:
        reps = self.propagate()
        tag_part = self.scoring.tag_part(reps.tag)                      # [H, d], once

        def score(users: Tensor, videos: Tensor, cand: Tensor) -> Tensor:
            return self.scoring.score_candidates(reps.user[users], reps.video[videos], tag_part, cand)

        return score

    def all_scorer(self) -> AllScoreFn:
        reps = self.propagate()
        tag_part = self.scoring.tag_part(reps.tag)                      # [H, d], once

        def score(users: Tensor, videos: Tensor) -> Tensor:
            distinct, of_line = torch.unique(users, return_inverse=True)  # [G], [B]
            return self.scoring.score_all(reps.user[distinct], reps.video[videos], of_line, tag_part)

        return score


class GCNPHR(_GraphRanker):
    r"""GCN-PHR (Wei et al., ACM MM 2019; SPEC §3).

    .. math::
        \mathbf{x}_u^0 = \mathbf{E}_{user}[u], \quad \mathbf{x}_h^0 = \mathbf{E}_{tag}[h], \quad
        \mathbf{z}_v = \mathrm{LReLU}(\mathbf{W}_f \mathbf{f}_v + \mathbf{b}_f)

        (\mathbf{X}_{user}^l, \mathbf{X}_{tag}^l) = \mathrm{PHRConv}_l(\mathbf{X}_{user}^{l-1},
        \mathbf{X}_{tag}^{l-1}, \mathbf{Z}), \quad l = 1 \dots L

        s(u, v, h) = \bar{\mathbf{v}}^\top \bar{\mathbf{h}} \quad (\text{see } \texttt{UserScorer})

    Args:
        cfg (Config): ``dim_latent``, ``num_layers``, ``aggr_mode``, ``scoring_mode``,
            ``hide_own``, ``dropout`` and the ablations ``attention``, ``messages`` (SPEC §3.2).
        graph (PairGraph): the training pair graph (kept as non-persistent buffers).
        features (Tensor): ``[V, F]`` video features (a non-persistent buffer), row ``i`` for video
            ``video_order[i]``.
        video_order (Tensor, optional): ``[V]`` the video of each row of ``features`` (default: row i is
            video i). With the training graph's videos first (:meth:`graph_videos_first`, as
            ``train.build_model`` does), a training step projects only those rows, one contiguous block.
    """

    def __init__(self, cfg: Config, graph: PairGraph, features: Tensor, video_order: Tensor | None = None) -> None:
        super().__init__(cfg, graph, features)
        order = torch.arange(features.size(0)) if video_order is None else video_order
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel())                  # [V] row of each video
        graph_rows = position[graph.pv_video]                           # [E] row of each edge's video
        self.num_graph_rows = int(graph_rows.max()) + 1 if graph_rows.numel() else 0
        self.register_buffer("video_order", order, persistent=False)   # [V]
        # every CSR pattern, built once, on the rows of z: the graph's videos renumbered by row
        self.index = PairIndex(replace(graph, pv_video=graph_rows, num_video=self.num_graph_rows))
        # sampled-subgraph training (Config.num_neigh): the sampler reads videos as rows of z, like the index
        self.sampler = PairSampler(graph, cfg.num_neigh, cfg.seed, video_row=position) if cfg.num_neigh else None
        self.convs = nn.ModuleList(PHRConv(cfg.dim_latent, aggr=cfg.aggr_mode, attention=cfg.attention == "on",
                                           messages=cfg.messages, pair_weight=cfg.pair_weight)
                                   for _ in range(cfg.num_layers))
        self.reset_parameters()

    @staticmethod
    def graph_videos_first(graph: PairGraph) -> Tensor:
        """``[V]`` every video, those of the training graph first (each group in id order)."""
        in_graph = torch.zeros(graph.num_video, dtype=torch.bool)
        in_graph[graph.pv_video.cpu()] = True                          # [V]
        return torch.cat([in_graph.nonzero().squeeze(1), (~in_graph).nonzero().squeeze(1)])

    def video_repr(self) -> Tensor:
        return self._by_video(F.leaky_relu(self.video_proj(self.features), NEGATIVE_SLOPE))

    def _by_video(self, z_rows: Tensor) -> Tensor:
        """``[V, d]`` in video order from the first rows of ``features``' order (the others stay zero)."""
        z = z_rows.new_zeros(self.features.size(0), z_rows.size(1))
        return z.index_copy(0, self.video_order[: z_rows.size(0)], z_rows)

    def batch_reps(self, users: Tensor, tags: Tensor, hidden_rows: Tensor | None) -> Reps:
        return self.propagate(hidden_rows, outputs=(users, tags))

    def loss(self, users, videos, pos, neg, rows):
        if self.sampler is None or not self.training:   # full-graph propagation (and evaluation)
            return super().loss(users, videos, pos, neg, rows)
        u, v, tags = self.sampled_batch(users, videos, torch.cat([pos, neg.flatten()]), self.hidden_rows(videos, rows))
        neg_tags = tags[pos.numel():].view(*neg.shape, -1)              # [B, d], or [B, K, d] for [B, K] negatives
        return self.pair_loss(self.scoring(u, v, tags[: pos.numel()]), self.scoring(u, v, neg_tags))

    def sampled_batch(self, users: Tensor, videos: Tensor, tags: Tensor,
                      hidden_rows: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        r"""Sampled-subgraph training (``Config.num_neigh`` = K; ``sampling.py``): :math:`\mathbf{x}_u^L` of
        ``users``, :math:`\mathbf{z}_v` of ``videos`` and :math:`\mathbf{x}_h^L` of ``tags``, propagated through
        the pairs reachable from them within L hops, at most K sampled pairs per node and layer.

        Layer l runs the same ``PHRConv`` on the block of its destinations (:class:`sampling.Block`), so its
        cost follows the sampled pairs, not the graph: only the block's users, hashtags and pair–video edges
        are visited and only the videos of those edges and of the batch are projected. With K at least the
        largest degree the results are those of :meth:`propagate` with ``outputs``. ``hidden_rows`` hides
        those training rows' edges (``Config.hide_own``).

        Shapes: users [B], videos [B], tags [T] → [B, d], [B, d], [T, d]
        """
        sub = self.sampler.sample(users, tags, len(self.convs), videos=videos)
        rows = self.sampler.feature_rows(self.features, sub.video_rows)                     # [V_s, F]
        z = F.leaky_relu(self.video_proj(rows), NEGATIVE_SLOPE, inplace=True)               # [V_s, d]
        x_user, x_tag = self.user_emb[sub.in_user], self.tag_emb[sub.in_tag]  # [U_0, d], [H_0, d]
        for block, conv in zip(sub.blocks, self.convs):
            edge_mask = None if hidden_rows is None else ~torch.isin(block.graph.pv_row, hidden_rows)  # [E_b]
            x_user, x_tag = conv(x_user[block.user_from], x_tag[block.tag_from], z, block.graph,
                                 edge_mask=edge_mask, index=block.index, outputs=block.outputs)
            x_user, x_tag = x_user[: block.num_dst_user], x_tag[: block.num_dst_tag]  # this layer's outputs
        return (x_user[torch.searchsorted(sub.out_user, users.contiguous())], z[sub.video_at],
                x_tag[torch.searchsorted(sub.out_tag, tags.contiguous())])

    def propagate(self, hidden_rows: Tensor | None = None, outputs: tuple[Tensor, Tensor] | None = None) -> Reps:
        """Full-graph propagation; ``hidden_rows`` ``[B]`` hides those training rows' edges. With ``outputs``
        (users, hashtags), as for a training batch, only their rows of ``Reps.user``/``Reps.tag`` are exact
        (the last layer visits only their pairs; the other rows are not meaningful) and ``Reps.video``
        only for the videos of the training graph (only their features are projected; the others are 0)."""
        graph = self.graph
        edge_mask = None
        if hidden_rows is not None:
            hidden = torch.zeros(graph.row_pair.numel(), dtype=torch.bool, device=hidden_rows.device)
            hidden[hidden_rows] = True                                  # [R]
            edge_mask = ~hidden[graph.pv_row]                           # [E]
        rows = self.features if outputs is None else self.features[: self.num_graph_rows]
        z_rows = F.leaky_relu(self.video_proj(rows), NEGATIVE_SLOPE, inplace=True)  # [V or V_graph, d], rows' order
        z_graph = z_rows[: self.num_graph_rows]                         # [V_graph, d] the graph's videos
        if self.cfg.norm == "pair":
            outputs = None  # PairNorm's mean runs over every node: the last layer visits the whole graph
        x_user, x_tag = self.user_emb, self.tag_emb
        for layer, conv in enumerate(self.convs, start=1):
            x_user, x_tag = conv(x_user, x_tag, z_graph, graph, edge_mask=edge_mask, index=self.index,
                                 outputs=outputs if layer == len(self.convs) else None)
            if self.cfg.norm == "pair":
                x_user, x_tag = pair_norm(x_user), pair_norm(x_tag)
        return Reps(x_user, x_tag, self._by_video(z_rows))


class ReleasedGCN(_GraphRanker):
    """The release's own architecture (SPEC §3.1): ``num_layers`` rounds of GATConv on video→user and
    video→hashtag edges then SAGEConv on user↔hashtag edges (``aggr_mode`` reaches SAGEConv), with
    the same id embeddings (trained here), scoring and loss as GCN-PHR."""

    def __init__(self, cfg: Config, graph: PairGraph, features: Tensor) -> None:
        super().__init__(cfg, graph, features)
        pair_video = graph.pv_video                                      # [E]
        pair_of_edge = torch.repeat_interleave(torch.arange(graph.num_pairs),
                                               graph.pv_ptr.diff())      # [E]
        video_user = torch.stack([pair_video, graph.pair_user[pair_of_edge]]).unique(dim=1)
        video_tag = torch.stack([pair_video, graph.pair_hashtag[pair_of_edge]]).unique(dim=1)
        self.register_buffer("video_user", video_user, persistent=False)  # [2, E_vu]
        self.register_buffer("video_tag", video_tag, persistent=False)    # [2, E_vh]
        self.register_buffer("pair_index", torch.stack([graph.pair_user, graph.pair_hashtag]),
                             persistent=False)                            # [2, P]
        self.convs = nn.ModuleList(ReleasedConv(cfg.dim_latent, aggr=cfg.aggr_mode, heads=cfg.num_heads)
                                   for _ in range(cfg.num_layers))
        self.reset_parameters()

    def propagate(self, hidden_rows: Tensor | None = None) -> Reps:
        z = self.video_repr()
        x_user, x_tag = self.user_emb, self.tag_emb
        for conv in self.convs:
            x_user, x_tag, z = conv(x_user, x_tag, z, self.video_user, self.video_tag, self.pair_index)
        return Reps(x_user, x_tag, z)


class HomogeneousGCN(_GraphRanker):
    r"""The "homogeneous graph" ablation of GCN-PHR (SPEC §3.2): one plain GCN (Kipf & Welling, ICLR 2017)
    over a single node set of users, hashtags and videos, joined by every user–video, hashtag–video and
    user–hashtag edge of the training rows, instead of the pair graph and its attention.

    .. math::
        \mathbf{X}^0 = [\mathbf{E}_{user} \,\|\, \mathbf{E}_{tag} \,\|\, \mathbf{Z}], \qquad
        \mathbf{X}^l = \mathrm{LReLU}\big(\hat{\mathbf{D}}^{-1/2} \hat{\mathbf{A}} \hat{\mathbf{D}}^{-1/2}
        \mathbf{X}^{l-1} \mathbf{W}^l + \mathbf{b}^l\big), \quad l = 1 \dots L

    with :math:`\hat{\mathbf{A}} = \mathbf{A} + \mathbf{I}` (``GCNConv``: unweighted undirected edges,
    self-loops, symmetric normalisation). Nodes follow the global id order of ``data_load.IdSpace``
    (users, hashtags, videos). Users and hashtags are scored with their layer-L rows, videos with
    :math:`\mathbf{z}_v` as in GCN-PHR: val/test videos are not in the training graph, and a training
    video's propagated row would carry its own hashtags. Scoring and loss are GCN-PHR's; with
    ``hide_own`` an edge is dropped when every training row behind it is hidden.

    Args:
        cfg (Config): ``dim_latent``, ``num_layers``, ``scoring_mode``, ``hide_own``, ``dropout``.
        graph (PairGraph): the training pair graph, from which the edges are read.
        features (Tensor): ``[V, F]`` video features (a non-persistent buffer).

    Shapes: N_e distinct undirected edges, each stored once (``edge_ends`` [2, N_e]) and sent both ways.
    """

    def __init__(self, cfg: Config, graph: PairGraph, features: Tensor) -> None:
        super().__init__(cfg, graph, features)
        ids = IdSpace(graph.num_user, graph.num_hashtag, graph.num_video)
        num_nodes = graph.num_user + graph.num_hashtag + graph.num_video
        pair = torch.repeat_interleave(torch.arange(graph.num_pairs), graph.pv_ptr.diff())   # [E]
        user = ids.to_global("user", graph.pair_user[pair])                                  # [E]
        tag = ids.to_global("hashtag", graph.pair_hashtag[pair])                             # [E]
        video = ids.to_global("video", graph.pv_video)                                       # [E]
        src = torch.cat([user, tag, user])                                                   # [3E]
        dst = torch.cat([video, video, tag])                                                 # [3E]
        keys, edge_of = torch.unique(src * num_nodes + dst, return_inverse=True)             # [N_e], [3E]
        row_edges = torch.empty(graph.row_pair.numel(), 3, dtype=torch.long)                 # [R, 3]
        row_edges[graph.pv_row] = edge_of.view(3, -1).T                                      # [E, 3]
        self.register_buffer("edge_ends", torch.stack([keys // num_nodes, keys % num_nodes]),
                             persistent=False)                                               # [2, N_e]
        self.register_buffer("edge_support", torch.bincount(edge_of, minlength=keys.numel()),
                             persistent=False)                                               # [N_e] rows per edge
        self.register_buffer("row_edges", row_edges, persistent=False)
        self.convs = nn.ModuleList(GCNConv(cfg.dim_latent, cfg.dim_latent) for _ in range(cfg.num_layers))
        self.reset_parameters()

    def edge_index(self, hidden_rows: Tensor | None = None) -> Tensor:
        """``[2, 2 N_e']`` both directions of every edge that a visible training row supports
        (``hidden_rows`` ``[B]``: the rows to hide; None: every edge)."""
        ends = self.edge_ends                                                                # [2, N_e]
        if hidden_rows is not None:
            hidden = torch.bincount(self.row_edges[hidden_rows].flatten(),
                                    minlength=self.edge_support.numel())                     # [N_e]
            ends = ends[:, hidden < self.edge_support]                                       # [2, N_e']
        return torch.cat([ends, ends.flip(0)], dim=1)

    def propagate(self, hidden_rows: Tensor | None = None) -> Reps:
        """Full-graph propagation; ``hidden_rows`` ``[B]`` removes the edges only those rows support."""
        edge_index = self.edge_index(hidden_rows)                                            # [2, 2 N_e']
        z = self.video_repr()                                                                # [V, d]
        x = torch.cat([self.user_emb, self.tag_emb, z])                                      # [U+H+V, d]
        for conv in self.convs:
            x = F.leaky_relu(conv(x, edge_index), NEGATIVE_SLOPE)
        num_user, num_tag, _ = self._graph_shape
        x_user, x_tag = x[:num_user], x[num_user:num_user + num_tag]                         # [U, d], [H, d]
        return Reps(x_user, x_tag, z)
