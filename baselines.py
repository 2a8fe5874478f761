"""Baselines of the paper's comparison (SPEC §4): the four published models and the reference rankers.

The paper's baselines, adapted as SPEC §4 and ``BASELINES.md`` say (every adaptation is documented
in the class docstring: what the original did, what we do, why):

- ``utm``: UTM (Denton et al., KDD 2015), user-conditional 3-way multiplicative gating, WARP loss;
- ``contagnet``: ConTagNet (Rawat & Kankanhalli, ACM MM 2016), content MLP ‖ context MLP → all
  hashtags, multi-label sigmoid cross-entropy;
- ``csmn``: CSMN (Park et al., CVPR 2017), context sequence memory network, sequence cross-entropy;
- ``ushm``: USHM (Veit et al., CVPR 2018), trilinear user-specific hashtag model, softmax cross-entropy.

Each trains with its own paper's loss by default (``--loss native``) or with BPR on the shared
(h⁺, h⁻) rows of the training loop (``--loss bpr``), for a like-for-like comparison with GCN-PHR.
``--baseline_size paper`` keeps the original widths, ``small`` is a documented CPU setting.

The reference rankers every comparison table carries (SPEC §4, last item):

- ``pop``: global training frequency of the hashtag;
- ``userpop``: how often the user gave the hashtag to her training videos, global frequency breaking ties;
- ``content``: a content-only model :math:`s = \\langle \\mathbf{P} \\mathbf{f}_v, \\mathbf{e}_h \\rangle`;
- ``mf``: BPR matrix factorisation on user–hashtag pairs, :math:`s = \\langle \\mathbf{e}_u, \\mathbf{e}_h \\rangle`;
- ``knn``: neighbour voting, the hashtags of the user's (and everyone's) training videos whose features are
  closest to the video's, plus the user's own hashtag frequencies: no training, a yardstick of what features
  and history give together.

All follow :class:`model.Ranker`, so they share data, negatives, loop, checkpoints and evaluation
with GCN-PHR. Shape legend as in ``model.py``; in addition M WARP draws per row, K the most training
hashtags of a video in a batch, T decoding steps, S memory slots, n distinct tokens, m memory width.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_load import PairGraph
from gcn_layers import _counts_to_ptr, _spmm
from model import AllScoreFn, Config, Ranker, ScoreFn, bpr_loss


def _dot(x: Tensor, tags: Tensor) -> Tensor:
    """Row-wise scores of ``x`` [B, d] against ``tags`` [B, d] → [B] or [B, K, d] → [B, K]."""
    return (x.unsqueeze(1) * tags).sum(-1) if tags.dim() == 3 else (x * tags).sum(-1)



def users_pairs(pair_key: Tensor, users: Tensor, num_hashtag: int) -> tuple[Tensor, Tensor, Tensor]:
    """Every (user, hashtag) pair of each line's user, from the sorted keys ``user * H + hashtag`` of the pairs:
    ``(line [n], at [n], tag [n])``, the line, the pair's position in ``pair_key`` and its hashtag.
    A user without pairs (an id past the last user, too) has none."""
    first = torch.searchsorted(pair_key, users * num_hashtag)                        # [B] the user's pairs:
    count = torch.searchsorted(pair_key, (users + 1) * num_hashtag) - first          # [B] a range
    line = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), count)   # [n]
    at = torch.arange(line.numel(), device=users.device) - (count.cumsum(0) - count)[line] + first[line]
    return line, at, pair_key[at] - users[line] * num_hashtag

class Popularity(Ranker):
    """``pop``: s(u, v, h) = number of training rows with hashtag h. Nothing to train."""

    trainable = False

    def __init__(self, train: Tensor, num_hashtag: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.bincount(train[:, 2], minlength=num_hashtag).float())

    def scorer(self) -> ScoreFn:
        return lambda users, videos, cand: self.count[cand]

    def all_scorer(self) -> AllScoreFn:
        return lambda users, videos: self.count.expand(users.numel(), -1)       # [B, H]


class UserPopularity(Ranker):
    """``userpop``: s(u, v, h) = n(u, h) + pop(h) / (max pop + 1), where n(u, h) counts the user's
    training videos tagged h; the second term only breaks ties. Nothing to train."""

    trainable = False

    def __init__(self, train: Tensor, graph: PairGraph) -> None:
        super().__init__()
        pop = torch.bincount(train[:, 2], minlength=graph.num_hashtag).float()
        self.num_hashtag = graph.num_hashtag
        self.register_buffer("tie", pop / (pop.max() + 1))                       # [H] in [0, 1)
        self.register_buffer("pair_key", graph.pair_user * graph.num_hashtag + graph.pair_hashtag)
        self.register_buffer("pair_count", graph.pv_ptr.diff().float())          # [P]

    def scorer(self) -> ScoreFn:
        def score(users: Tensor, videos: Tensor, cand: Tensor) -> Tensor:
            key = users.unsqueeze(1) * self.num_hashtag + cand                    # [B, C]
            at = torch.searchsorted(self.pair_key, key).clamp(max=self.pair_key.numel() - 1)
            count = torch.where(self.pair_key[at] == key, self.pair_count[at], 0.0)
            return count + self.tie[cand]
        return score

    def all_scorer(self) -> AllScoreFn:
        def score(users: Tensor, videos: Tensor) -> Tensor:
            line, at, tag = users_pairs(self.pair_key, users, self.num_hashtag)
            out = self.tie.new_zeros(users.numel(), self.num_hashtag)                    # [B, H]
            out[line, tag] = self.pair_count[at]
            return out.add_(self.tie)
        return score


class NeighbourVoting(Ranker):
    r"""``knn``: the hashtags of the training videos that look like this one (neighbour voting, in the manner
    of Li, Snoek & Worring, "Learning social tag relevance by neighbor voting", IEEE TMM 2009). Nothing to
    train; it is the yardstick of what the video features and the user's history say together, without a
    learned model.

    .. math::
        s(u, v, h) = \sum_{v' \in T_u} w_u(v, v')\,[h \in v'] + \alpha\,\frac{n(u, h)}{n(u)}
                   + \beta \sum_{v' \in T} w(v, v')\,[h \in v'] + \epsilon\,\mathrm{pop}(h)

    with :math:`w_u` (:math:`w`) the softmax of :math:`\cos(\mathbf{f}_v, \mathbf{f}_{v'}) / \tau` over the
    user's training videos :math:`T_u` (over all training videos :math:`T`), :math:`n(u, h)` the user's
    training videos tagged h, :math:`n(u)` her training rows, and a tie-break :math:`\epsilon\,\mathrm{pop}(h)
    < 10^{-6}`. A user without training videos (``recommend.py``'s stand-in for an unseen user) keeps only the
    everyone term.

    Args:
        cfg (Config): ``knn_temperature`` (τ), ``knn_user_weight`` (α), ``knn_global_weight`` (β).
        train (Tensor): ``[R, 3]`` training rows (user, video, hashtag).
        features (Tensor): ``[V, F]`` video features (kept L2-normalised, row by row).
        num_user (int), num_hashtag (int): U and H.

    Shapes:
        scores: users [B], videos [B], cand [B, C] → [B, C]; all hashtags [B, H]. Internally [b, T] similarities
        for ``chunk`` lines at a time (T training videos).
    """

    trainable = False
    chunk = 128  # lines whose [chunk, T] similarities are held at once

    def __init__(self, cfg: Config, train: Tensor, features: Tensor, num_user: int, num_hashtag: int) -> None:
        super().__init__()
        self.tau, self.alpha, self.beta = cfg.knn_temperature, cfg.knn_user_weight, cfg.knn_global_weight
        self.num_user, self.num_hashtag = num_user, num_hashtag
        users, videos, tags = train.unbind(1)                                      # [R] each
        train_videos, row_video = torch.unique(videos, return_inverse=True)       # [T], [R] column of each row
        video_user = torch.empty_like(train_videos)
        video_user[row_video] = users                                              # [T] (a video has one user)
        by_tag = torch.argsort(tags * len(train_videos) + row_video)               # [R] rows in CSR order
        keys, counts = torch.unique(users * num_hashtag + tags, return_counts=True)  # the user's pairs, sorted
        rows_of_user = torch.bincount(users, minlength=num_user).double()         # [U] n(u)
        pop = torch.bincount(tags, minlength=num_hashtag).double()
        self.register_buffer("features", F.normalize(features, dim=1), persistent=False)   # [V, F]
        self.register_buffer("train_videos", train_videos, persistent=False)
        self.register_buffer("video_user", video_user, persistent=False)
        # the [H, T] hashtag-by-training-video incidence (1 where the video carries the hashtag), CSR
        self.register_buffer("tag_ptr", _counts_to_ptr(torch.bincount(tags, minlength=num_hashtag)),
                             persistent=False)                                                  # [H + 1]
        self.register_buffer("tag_video", row_video[by_tag], persistent=False)               # [R]
        self.register_buffer("pair_key", keys, persistent=False)
        self.register_buffer("pair_share", counts.double() / rows_of_user[keys // num_hashtag], persistent=False)
        self.register_buffer("tie", 1e-6 * pop / (pop.max() + 1), persistent=False)   # [H] in [0, 1e-6)

    def all_scorer(self) -> AllScoreFn:
        def score(users: Tensor, videos: Tensor) -> Tensor:
            return torch.cat([s for _, s in self._chunks(users, videos)]).float()                   # [B, H]
        return score

    def scorer(self) -> ScoreFn:
        def score(users: Tensor, videos: Tensor, cand: Tensor) -> Tensor:
            return torch.cat([s.gather(1, cand[lines]) for lines, s in self._chunks(users, videos)]).float()  # [B, C]
        return score

    def _chunks(self, users: Tensor, videos: Tensor):
        """``(lines, [b, H] scores)`` for :attr:`chunk` lines at a time."""
        for lo in range(0, users.numel(), self.chunk):
            lines = slice(lo, lo + self.chunk)
            yield lines, self._score_all(users[lines], videos[lines])

    def _score_all(self, users: Tensor, videos: Tensor) -> Tensor:
        """``[b, H]`` float64 scores of every hashtag for ``b`` lines."""
        sim = (self.features[videos] @ self.features[self.train_videos].T).double() / self.tau   # [b, T]
        own = self.video_user.unsqueeze(0) == users.unsqueeze(1)                            # [b, T]
        w_own = torch.softmax(sim.masked_fill(~own, float("-inf")), dim=1).nan_to_num_(0.0)  # 0 without videos
        weights = [w_own] + ([torch.softmax(sim, dim=1).mul_(self.beta)] if self.beta else [])
        votes = sum(weights).T.contiguous()                                                  # [T, b]
        out = _spmm(self.tag_ptr, self.tag_video, votes.new_ones(self.tag_video.numel()), self.num_hashtag,
                    votes).T.contiguous()                                                   # [b, H]
        if self.alpha:
            line, at, tag = users_pairs(self.pair_key, users, self.num_hashtag)
            out[line, tag] += self.alpha * self.pair_share[at]
        return out.add_(self.tie)

    def extra_repr(self) -> str:
        return (f"train_videos={self.train_videos.numel()}, temperature={self.tau}, user_weight={self.alpha}, "
                f"global_weight={self.beta}")


class ContentModel(Ranker):
    """``content``: s(v, h) = ⟨P f_v, e_h⟩ — what the video's features alone say, trained with BPR."""

    def __init__(self, cfg: Config, features: Tensor, num_hashtag: int) -> None:
        super().__init__()
        self.proj = nn.Linear(features.size(1), cfg.dim_latent, bias=False)
        self.tag_emb = nn.Parameter(torch.empty(num_hashtag, cfg.dim_latent))
        self.register_buffer("features", features, persistent=False)           # [V, F]
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.xavier_uniform_(self.tag_emb)

    def loss(self, users, videos, pos, neg, rows):
        v = self.proj(self.features[videos])                                     # [B, d]
        return bpr_loss((v * self.tag_emb[pos]).sum(-1), _dot(v, self.tag_emb[neg]))

    def scorer(self) -> ScoreFn:
        def score(users: Tensor, videos: Tensor, cand: Tensor) -> Tensor:
            v = self.proj(self.features[videos])                                 # [B, d]
            return torch.einsum("bd,bcd->bc", v, self.tag_emb[cand])             # [B, C]
        return score

    def all_scorer(self) -> AllScoreFn:
        return lambda users, videos: self.proj(self.features[videos]) @ self.tag_emb.T   # [B, H]


class MatrixFactorization(Ranker):
    """``mf``: s(u, h) = ⟨e_u, e_h⟩ trained with BPR on the training rows (the video is ignored)."""

    def __init__(self, cfg: Config, num_user: int, num_hashtag: int) -> None:
        super().__init__()
        self.user_emb = nn.Parameter(torch.empty(num_user, cfg.dim_latent))
        self.tag_emb = nn.Parameter(torch.empty(num_hashtag, cfg.dim_latent))
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.tag_emb)

    def loss(self, users, videos, pos, neg, rows):
        u = self.user_emb[users]                                                 # [B, d]
        return bpr_loss((u * self.tag_emb[pos]).sum(-1), _dot(u, self.tag_emb[neg]))

    def scorer(self) -> ScoreFn:
        def score(users: Tensor, videos: Tensor, cand: Tensor) -> Tensor:
            return torch.einsum("bd,bcd->bc", self.user_emb[users], self.tag_emb[cand])
        return score

    def all_scorer(self) -> AllScoreFn:
        return lambda users, videos: self.user_emb[users] @ self.tag_emb.T        # [B, H]


# --------------------------------------------------------------------------------------------
# The paper's baselines (SPEC §4, BASELINES.md)
# --------------------------------------------------------------------------------------------
def warp_rank_weight(trials: Tensor, num_labels: int) -> Tensor:
    """WARP's rank weight L(⌊(Y − 1) / N⌋), L(k) = Σ_{i ≤ k} 1/i, for N ≥ 1 draws and Y labels.

    Shapes: trials ``[*]`` int → ``[*]`` float.
    """
    steps = torch.arange(1, num_labels, device=trials.device, dtype=torch.float64)
    harmonic = torch.cat([steps.new_zeros(1), steps.reciprocal().cumsum(0)])      # [Y] L(0) … L(Y−1)
    return harmonic[torch.div(num_labels - 1, trials, rounding_mode="floor")].float()


def warp_loss(pos_score: Tensor, neg_score: Tensor, valid: Tensor, num_labels: int) -> Tensor:
    """WARP (Weston et al., 2011) with the draws made in advance: row b's negatives are tried in column
    order, draws that are not negatives (``valid`` False) are skipped, and the first one that violates
    the margin, s⁻ > s⁺ − 1, after N valid draws gives ``L(⌊(Y − 1)/N⌋) · (1 − s⁺ + s⁻)``; a row with
    no violator costs 0.

    Shapes: pos_score ``[B]``, neg_score ``[B, M]``, valid ``[B, M]`` bool → ``[B]``.
    """
    margin = 1 - pos_score.unsqueeze(1) + neg_score                             # [B, M]
    violates = valid & (margin > 0)
    num_draws = neg_score.size(1)
    column = torch.arange(num_draws, device=neg_score.device)
    first = torch.where(violates, column, num_draws).amin(1)                     # [B], M = none
    found = first < num_draws
    first = first.clamp(max=num_draws - 1).unsqueeze(1)                          # [B, 1]
    trials = valid.cumsum(1).gather(1, first).squeeze(1).clamp(min=1)           # [B] N
    hinge = margin.gather(1, first).squeeze(1)                                   # [B]
    return torch.where(found, warp_rank_weight(trials, num_labels) * hinge, 0.0)


def tfidf_context(train: Tensor, num_user: int, num_hashtag: int, length: int) -> tuple[Tensor, Tensor]:
    """Each user's top ``length`` training hashtags by TF-IDF, best first (CSMN's user context).

    Users are the documents and their training hashtags the terms, from the **training rows only**:
    tf(u, h) = the number of u's training videos tagged h, idf(h) = ln((1 + U) / (1 + df(h))) + 1 with
    df(h) the number of users who used h (scikit-learn's smoothed idf); ties go to the smaller id.

    Shapes: train ``[R, 3]`` → tags ``[U, length]`` (0 where unused), mask ``[U, length]`` bool.
    """
    pair, tf = torch.unique(train[:, 0] * num_hashtag + train[:, 2], return_counts=True)   # [P] by (u, h)
    user, tag = pair // num_hashtag, pair % num_hashtag
    df = torch.bincount(tag, minlength=num_hashtag).double()                     # [H]
    weight = tf.double() * (torch.log((1 + num_user) / (1 + df[tag])) + 1)        # [P]
    order = torch.argsort(-weight, stable=True)                                  # best first, ties by h
    order = order[torch.argsort(user[order], stable=True)]                       # then grouped by user
    user, tag = user[order], tag[order]
    count = torch.bincount(user, minlength=num_user)                            # [U]
    rank = torch.arange(user.numel()) - (count.cumsum(0) - count)[user]         # [P] rank inside the user
    keep = rank < length
    tags = torch.zeros(num_user, length, dtype=torch.long)
    mask = torch.zeros(num_user, length, dtype=torch.bool)
    tags[user[keep], rank[keep]] = tag[keep]
    mask[user[keep], rank[keep]] = True
    return tags, mask


def _mlp(dim_in: int, widths: tuple[int, ...], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(dim_in, width), nn.ReLU(), nn.Dropout(dropout)]
        dim_in = width
    return nn.Sequential(*layers)


class _PaperBaseline(Ranker):
    """Shared parts of the four paper baselines: the features and each training video's hashtags as
    non-persistent buffers, the ``cfg.loss`` switch and the scorer.

    ``loss="native"`` calls :meth:`native_loss` (the original paper's loss); ``loss="bpr"`` is BPR on
    the loop's (h⁺, h⁻) rows (a row's K terms averaged with ``--neg_per_row K``) with the same :meth:`score`
    that evaluation uses. Subclasses implement
    ``score(users [B], videos [B], cand [B, C]) -> [B, C]`` and ``native_loss(users, videos, pos)``.
    A video-level loss (ConTagNet, CSMN) is weighted 1/k_v per row, k_v = the video's training
    hashtags, so that an epoch over the training rows counts every training video once.
    """

    def __init__(self, cfg: Config, train: Tensor, features: Tensor, num_user: int, num_hashtag: int) -> None:
        super().__init__()
        self.cfg, self.num_user, self.num_hashtag = cfg, num_user, num_hashtag
        self.register_buffer("features", features, persistent=False)                  # [V, F]
        video, tag = train[:, 1], train[:, 2]
        order = torch.argsort(video * num_hashtag + tag)
        counts = torch.bincount(video, minlength=features.size(0))
        self.register_buffer("vt_ptr", torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
                             persistent=False)                                         # [V+1]
        self.register_buffer("vt_tags", tag[order], persistent=False)                  # [R] by video

    def _video_tags_flat(self, videos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The training hashtags of ``videos [B]`` as (row [n], column [n], hashtag [n])."""
        start = self.vt_ptr[videos]
        count = self.vt_ptr[videos + 1] - start                                        # [B] k_v
        row = torch.repeat_interleave(torch.arange(videos.numel(), device=videos.device), count)   # [n]
        col = torch.arange(row.numel(), device=videos.device) - (count.cumsum(0) - count)[row]  # [n]
        return row, col, self.vt_tags[start[row] + col]

    def video_tags(self, videos: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, K]`` training hashtags of each video (0-padded) and the ``[B, K]`` mask of real ones."""
        row, col, tag = self._video_tags_flat(videos)
        width = int(col.max()) + 1 if col.numel() else 0
        tags = torch.zeros(videos.numel(), width, dtype=torch.long, device=videos.device)
        mask = torch.zeros(videos.numel(), width, dtype=torch.bool, device=videos.device)
        tags[row, col], mask[row, col] = tag, True
        return tags, mask

    def multi_hot(self, videos: Tensor) -> Tensor:
        """``[B, H]`` bool: hashtag h is one of the video's training hashtags."""
        row, _, tag = self._video_tags_flat(videos)
        hot = torch.zeros(videos.numel(), self.num_hashtag, dtype=torch.bool, device=videos.device)
        hot[row, tag] = True
        return hot

    def score(self, users: Tensor, videos: Tensor, cand: Tensor) -> Tensor:
        raise NotImplementedError

    def native_loss(self, users: Tensor, videos: Tensor, pos: Tensor) -> Tensor:
        raise NotImplementedError

    def loss(self, users, videos, pos, neg, rows):
        if self.cfg.loss == "bpr":                                                     # neg [B] or [B, K]
            s = self.score(users, videos, torch.cat([pos[:, None], neg.view(pos.numel(), -1)], dim=1))  # [B, 1+K]
            return bpr_loss(s[:, 0], s[:, 1:])                                        # one negative: a mean of one
        return self.native_loss(users, videos, pos)

    def scorer(self) -> ScoreFn:
        return self.score

    def score_all(self, users: Tensor, videos: Tensor) -> Tensor:
        """``[B, H]`` the scores of every hashtag; by default :meth:`score` with every hashtag as candidate."""
        every = torch.arange(self.num_hashtag, device=users.device)
        return self.score(users, videos, every.expand(users.numel(), -1))

    def all_scorer(self) -> AllScoreFn:
        return self.score_all


class UTM(_PaperBaseline):
    r"""``utm``: user-conditional hashtag prediction (Denton, Weston, Paluri, Bourdev, Fergus, KDD 2015).

    .. math::
        s(u, v, h) = \big\langle \mathbf{C}\,[(\mathbf{A} \mathbf{f}_v) \odot (\mathbf{B} \mathbf{e}_u)]
        + \mathbf{A}' \mathbf{f}_v + \mathbf{B}' \mathbf{e}_u,\; \mathbf{e}_h \big\rangle

    The first term is the 3-way multiplicative gating (the image map made user-dependent, factorised
    with F factors), the second the user-biased term; both are linear in e_h, so a line is scored by
    one query vector ``[d]`` against its candidates.

    Adaptations (BASELINES.md §1):

    - *User context.* The original's user was a sparse metadata vector (age, gender, home location),
      so ``B u`` was a sum of metadata embeddings. No metadata exists here: u is the one-hot user id,
      and ``B e_u`` with a learned e_u ∈ R^d is that one-hot map (factored through d, which lets the
      gating and the biased term share one user vector).
    - *Content.* ``f_v`` (the concatenated micro-video features) replaces the CNN image vector.
    - *Sizes.* d = ``dim_latent``, F = 30 factors (the constant the GCN-PHR release passed to UTM); the
      model is small, so ``paper`` and ``small`` are the same.
    - *Loss* (``native``): WARP, as the original (Weston's WSABIE family): for each training row draw
      negatives uniformly over all H hashtags until one violates the margin 1, up to H − 1 draws
      (WARP's own cap), skipping the video's own training hashtags; weight L(⌊(H − 1)/N⌋). The draws
      are made as one ``[B, H − 1]`` block from torch's global RNG and the first violator is taken per
      row (:func:`warp_loss`), which is the sequential procedure vectorised. Parameters are not
      norm-constrained as in WSABIE; the loop's weight decay plays that role.

    Args:
        cfg (Config): ``dim_latent``, ``loss``.
        train (Tensor): ``[R, 3]`` training rows (for the videos' own hashtags).
        features (Tensor): ``[V, F]`` video features (a non-persistent buffer).
        num_user (int), num_hashtag (int): U, H.
        num_factors (int): F, default 30.
    """

    def __init__(self, cfg: Config, train: Tensor, features: Tensor, num_user: int, num_hashtag: int,
                 num_factors: int = 30) -> None:
        super().__init__(cfg, train, features, num_user, num_hashtag)
        d, dim_feat = cfg.dim_latent, features.size(1)
        self.user_emb = nn.Parameter(torch.empty(num_user, d))                         # e_u, [U, d]
        self.tag_emb = nn.Parameter(torch.empty(num_hashtag, d))                       # e_h, [H, d]
        self.gate_video = nn.Linear(dim_feat, num_factors, bias=False)                 # A
        self.gate_user = nn.Linear(d, num_factors, bias=False)                         # B
        self.gate_out = nn.Linear(num_factors, d, bias=False)                          # C
        self.bias_video = nn.Linear(dim_feat, d, bias=False)                           # A'
        self.bias_user = nn.Linear(d, d, bias=False)                                   # B'
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            nn.init.xavier_uniform_(p)

    def query(self, users: Tensor, videos: Tensor) -> Tensor:
        """``[B, d]``: C[(A f_v) ⊙ (B e_u)] + A' f_v + B' e_u."""
        x, e = self.features[videos], self.user_emb[users]                             # [B, F], [B, d]
        return self.gate_out(self.gate_video(x) * self.gate_user(e)) + self.bias_video(x) + self.bias_user(e)

    def score(self, users, videos, cand):
        return torch.einsum("bd,bcd->bc", self.query(users, videos), self.tag_emb[cand])   # [B, C]

    def score_all(self, users, videos):
        return self.query(users, videos) @ self.tag_emb.T                                # [B, H]

    def native_loss(self, users, videos, pos):
        every = self.query(users, videos) @ self.tag_emb.T                              # [B, H]
        draws = torch.randint(self.num_hashtag, (users.numel(), max(self.num_hashtag - 1, 1)),
                              device=users.device)                                     # [B, M]
        valid = ~self.multi_hot(videos).gather(1, draws)                               # [B, M]
        pos_score = every.gather(1, pos.unsqueeze(1)).squeeze(1)                       # [B]
        return warp_loss(pos_score, every.gather(1, draws), valid, self.num_hashtag).sum()

    def extra_repr(self) -> str:
        return (f"users={self.num_user}, hashtags={self.num_hashtag}, dim={self.tag_emb.size(1)}, "
                f"factors={self.gate_video.out_features}, loss={self.cfg.loss!r}")


class ConTagNet(_PaperBaseline):
    r"""``contagnet``: ConTagNet (Rawat & Kankanhalli, ACM MM 2016).

    .. math::
        \mathbf{z} = [\mathrm{MLP}_c(\mathbf{f}_v) \,\|\, \mathrm{MLP}_u(\mathbf{e}_u)], \quad
        s(u, v, h) = \mathbf{w}_h^\top \mathbf{z} + b_h

    each MLP two Linear → ReLU → Dropout(0.5) layers; one linear layer gives the logits of all H
    hashtags, and a candidate's score is its logit.

    Adaptations (BASELINES.md §2):

    - *Content.* The original fine-tuned AlexNet up to fc7 (4096-d, ReLU, dropout 0.5); ``f_v`` is
      given, so two trainable FC layers on it stand in for fc6/fc7.
    - *User context.* The original fed a 6-d photo-capture context (GPS, time of day, date) through
      two FC-1024 layers; no such context exists here, so the same two layers read a learned
      user-id embedding e_u ∈ R^d (d = ``dim_latent``).
    - *Sizes.* ``paper``: content 4096, 4096 and context 1024, 1024 (the original widths); ``small``
      (CPU): content 1024, 1024 and context 256, 256. Dropout 0.5 as the original in both.
    - *Initialisation.* Xavier weights, zero biases (the Caffe net's Gaussian std 0.005 / bias 1 went
      with its SGD learning-rate multipliers; training here uses Adam).
    - *Loss* (``native``): multi-label sigmoid cross-entropy over all H hashtags, target = the video's
      training hashtags (multi-hot), as the original; each training row carries 1/k_v of its video's
      loss.

    Args:
        cfg (Config): ``dim_latent``, ``loss``, ``baseline_size``.
        train (Tensor): ``[R, 3]`` training rows (the multi-hot targets).
        features (Tensor): ``[V, F]`` video features (a non-persistent buffer).
        num_user (int), num_hashtag (int): U, H.
    """

    SIZES = {"paper": ((4096, 4096), (1024, 1024)), "small": ((1024, 1024), (256, 256))}
    DROPOUT = 0.5

    def __init__(self, cfg: Config, train: Tensor, features: Tensor, num_user: int, num_hashtag: int) -> None:
        super().__init__(cfg, train, features, num_user, num_hashtag)
        content, context = self.SIZES[cfg.baseline_size]
        self.user_emb = nn.Parameter(torch.empty(num_user, cfg.dim_latent))          # e_u, [U, d]
        self.content = _mlp(features.size(1), content, self.DROPOUT)
        self.context = _mlp(cfg.dim_latent, context, self.DROPOUT)
        self.out = nn.Linear(content[-1] + context[-1], num_hashtag)                 # w_h, b_h
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        for lin in (*self.content, *self.context, self.out):
            if isinstance(lin, nn.Linear):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def logits(self, users: Tensor, videos: Tensor) -> Tensor:
        """``[B, H]`` logits of every hashtag."""
        z = torch.cat([self.content(self.features[videos]), self.context(self.user_emb[users])], dim=1)  # [B, Z]
        return self.out(z)

    def score(self, users, videos, cand):
        return self.logits(users, videos).gather(1, cand)                              # [B, C]

    def score_all(self, users, videos):
        return self.logits(users, videos)                                              # [B, H]

    def native_loss(self, users, videos, pos):
        target = self.multi_hot(videos).float()                                        # [B, H]
        bce = F.binary_cross_entropy_with_logits(self.logits(users, videos), target, reduction="none")
        return (bce.sum(1) / target.sum(1)).sum()

    def extra_repr(self) -> str:
        return f"users={self.num_user}, hashtags={self.num_hashtag}, size={self.cfg.baseline_size!r}, " \
               f"loss={self.cfg.loss!r}"


class _TokenMemory(NamedTuple):
    """Per-token parts of CSMN's memory, for n tokens: the input memory ``a [n, m]``, the query made
    from the token as the current input word ``q [n, m]``, and the memory-CNN taps applied to the
    output memory ``c``: ``g_context``, ``g_output`` ``[n, Σ heights, ch]``."""

    a: Tensor
    q: Tensor
    g_context: Tensor
    g_output: Tensor


class CSMN(_PaperBaseline):
    r"""``csmn``: context sequence memory network (Park, Kim, Kim, CVPR 2017), hashtag task.

    Memory slots (input memory ``a``, output memory ``c``, width m): one video slot
    (a = ReLU(W_ia f_v), c = ReLU(W_ic f_v)); S_c = 60 context slots, the user's top-60 training
    hashtags by TF-IDF; S_o = 16 output slots, the words fed so far (GO, y₁, …). A word slot is
    a = ReLU(W_h E_A[w]), c = ReLU(W_h E_C[w]). At step t, with input word y_{t−1}:

    .. math::
        \mathbf{q}_t = \mathrm{ReLU}(\mathbf{W}_q \mathrm{ReLU}(\mathbf{W}_h \mathbf{E}_B[y_{t-1}])), \quad
        p_{t,k} = \mathrm{softmax}_k(\mathbf{q}_t^\top \mathbf{a}_k), \quad
        \tilde{\mathbf{c}}_k = p_{t,k} \mathbf{c}_k

        \mathbf{h}_t = \big\Vert_{\text{memory} \in \{\text{context}, \text{output}\}}
        \big\Vert_{k_h \in \{3, 4, 5\}} \max_{\text{pos}} \mathrm{ReLU}(\mathrm{Conv}_{k_h}(\tilde{\mathbf{c}}))

        \mathbf{o}_t = \mathrm{ReLU}(\mathbf{W}_o [\mathrm{ReLU}(\mathbf{W}_p \tilde{\mathbf{c}}_{video})
        + \mathbf{h}_t]), \quad P(y_t) = \mathrm{softmax}(\mathbf{W}_f \mathbf{o}_t + \mathbf{b}_f)

    The attention softmax runs over the video slot, the user's real context slots and the output
    slots 0…t−1 (causal). Each convolution spans the full width m with ``ch`` channels per height.

    *Computation.* A convolution is linear in its input and the attention only scales each slot, so
    Conv(c̃)[pos] = bias + Σ_j p_{pos+j} (W_j c_{pos+j}): the taps W_j c of every token are computed
    once per batch (``_TokenMemory``) and each step only mixes them with its attention weights — the
    same numbers as convolving the weighted memory, T times cheaper. Training runs all T steps at
    once (teacher forcing with the causal mask); evaluation runs step 1 only.

    Adaptations (BASELINES.md §3):

    - *Video slot.* ``f_v`` replaces the ResNet-101 pool5 vector.
    - *User context.* The original's "active vocabulary" (the user's top hashtags by TF-IDF over her
      posts, 60 kept) is built from the **training split only** (:func:`tfidf_context`); the released
      preprocessing read test posts too, which leaks the targets.
    - *Vocabulary.* All H hashtags (no truncation) plus GO (input) and EOS (output); no UNK/PAD tokens
      (padding is masked).
    - *Targets.* The video's training hashtags, at most 15, then EOS (16 steps, the original's
      maximum). The order is shuffled for every row each time it is drawn (torch's global RNG), with
      the row's own positive first: over an epoch every hashtag of a video opens its sequence once, so
      step 1 learns the set, not a listed order. The original kept the post's order.
    - *Loss* (``native``): per-step softmax cross-entropy summed over the steps of a row (the original
      averaged over the batch's tokens; here losses are summed over the batch, SPEC §3), each row
      carrying 1/k_v of its video's sequence. No dropout, as the original.
    - *Ranking.* Score of a candidate h = log P₁(h | GO, v, u), the first-step log-probability
      (``loss="bpr"`` applies BPR to these scores).
    - *Sizes.* ``paper``: word embedding 512, memory width m = 1024, 300 channels per filter height
      (the original). ``small`` (CPU): 128, 256, 100 (BASELINES.md's CPU suggestion). Initialisation:
      uniform with variance 1/fan_in (TF's unit scaling, as attend2u), zero biases.

    Args:
        cfg (Config): ``loss``, ``baseline_size``.
        train (Tensor): ``[R, 3]`` training rows (user context and target sequences).
        features (Tensor): ``[V, F]`` video features (a non-persistent buffer).
        num_user (int), num_hashtag (int): U, H.
    """

    SIZES = {"paper": (512, 1024, 300), "small": (128, 256, 100)}   # word embedding, m, channels
    CONTEXT = 60
    MAX_LEN = 16
    HEIGHTS = (3, 4, 5)

    def __init__(self, cfg: Config, train: Tensor, features: Tensor, num_user: int, num_hashtag: int) -> None:
        super().__init__(cfg, train, features, num_user, num_hashtag)
        emb, m, ch = self.SIZES[cfg.baseline_size]
        self.go = self.eos = num_hashtag        # GO is input token H, EOS output class H
        self.embed_a = nn.Embedding(num_hashtag + 1, emb)                                 # E_A
        self.embed_b = nn.Embedding(num_hashtag + 1, emb)                                 # E_B
        self.embed_c = nn.Embedding(num_hashtag + 1, emb)                                 # E_C
        self.word = nn.Linear(emb, m)                                                     # W_h
        self.video_a = nn.Linear(features.size(1), m)                                     # W_ia
        self.video_c = nn.Linear(features.size(1), m)                                     # W_ic
        self.query = nn.Linear(m, m)                                                      # W_q
        self.conv_context = nn.ModuleList(nn.Conv1d(m, ch, k) for k in self.HEIGHTS)
        self.conv_output = nn.ModuleList(nn.Conv1d(m, ch, k) for k in self.HEIGHTS)
        width = 2 * len(self.HEIGHTS) * ch
        self.video_out = nn.Linear(m, width)                                              # W_p
        self.hidden = nn.Linear(width, width)                                             # W_o
        self.out = nn.Linear(width, num_hashtag + 1)                                      # W_f, b_f
        context, mask = tfidf_context(train, num_user, num_hashtag, self.CONTEXT)
        self.register_buffer("context", context, persistent=False)                        # [U, S_c]
        self.register_buffer("context_mask", mask, persistent=False)                      # [U, S_c]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.kaiming_uniform_(p, nonlinearity="linear")

    def _token_memory(self, tokens: Tensor) -> _TokenMemory:
        """The per-token memory parts of ``tokens [n]``."""
        a = F.relu(self.word(self.embed_a(tokens)))                                       # [n, m]
        c = F.relu(self.word(self.embed_c(tokens)))                                       # [n, m]
        q = F.relu(self.query(F.relu(self.word(self.embed_b(tokens)))))                   # [n, m]
        taps = [torch.cat([torch.einsum("nm,cmj->njc", c, conv.weight) for conv in convs], dim=1)
                for convs in (self.conv_context, self.conv_output)]                       # [n, 12, ch]
        return _TokenMemory(a, q, *taps)

    def _slot_taps(self, taps: Tensor, rows: Tensor, convs: nn.ModuleList) -> list[Tensor]:
        """For each filter height k, the tap W_j c of the token in slot pos + j: ``[N, S−k+1, k, ch]``,
        from taps ``[n, Σ heights, ch]`` and rows ``[N, S]`` (the row of taps of each slot's token)."""
        out, first = [], 0
        for conv in convs:
            height = conv.kernel_size[0]
            column = torch.arange(first, first + height, device=rows.device)             # [k]
            out.append(taps[rows.unfold(1, height, 1), column])                         # [N, S−k+1, k, ch]
            first += height
        return out

    @staticmethod
    def _pooled_conv(p: Tensor, slot_taps: list[Tensor], convs: nn.ModuleList) -> Tensor:
        """max_pos ReLU(Conv_k(p · c)) of one memory for every height k: p ``[B, T, S]`` the attention
        on its slots, slot_taps from :meth:`_slot_taps` (rows = B) → ``[B, T, 3·ch]``."""
        pooled = []
        for taps_k, conv in zip(slot_taps, convs):
            windows = p.unfold(2, taps_k.size(2), 1)                                    # [B, T, S−k+1, k]
            out = torch.einsum("btnj,bnjc->btnc", windows, taps_k)                      # [B, T, S−k+1, ch]
            pooled.append(F.relu(out.max(2).values + conv.bias))   # [B, T, ch]; + bias and ReLU commute with max
        return torch.cat(pooled, dim=-1)

    def _decode(self, users: Tensor, videos: Tensor, inputs: Tensor, mem: _TokenMemory | None = None,
                real: Tensor | None = None) -> Tensor:
        """``[B, T]`` input words (GO first; teacher forcing) → o_t ``[B, T, W]`` of every step, or
        ``[N, W]`` of the steps where ``real [B, T]`` is True.

        ``mem``: the memory of every token (its rows are the token ids); ``None``: built for the tokens
        of the batch. The context memory is built once per distinct user of the batch.
        """
        user, of_row = torch.unique(users, return_inverse=True)                        # [U_b], [B]
        context = self.context[user]                                                  # [U_b, S_c]
        if mem is None:
            tokens, rows = torch.unique(torch.cat([context.flatten(), inputs.flatten()]), return_inverse=True)
            mem = self._token_memory(tokens)
            ctx_rows, in_rows = rows[: context.numel()].view_as(context), rows[context.numel():].view_as(inputs)
        else:
            ctx_rows, in_rows = context, inputs
        steps = inputs.size(1)
        out_rows = F.pad(in_rows, (0, self.MAX_LEN - steps))                          # [B, S_o]
        x = self.features[videos]                                                     # [B, F]
        a_video, c_video = F.relu(self.video_a(x)), F.relu(self.video_c(x))          # [B, m]
        q = mem.q[in_rows]                                                            # [B, T, m]
        logit = torch.cat([
            torch.einsum("btm,bm->bt", q, a_video).unsqueeze(2),                      # [B, T, 1]
            torch.einsum("btm,bsm->bts", q, mem.a[ctx_rows].index_select(0, of_row)),  # [B, T, S_c]
            torch.einsum("btm,bsm->bts", q, mem.a[out_rows]),                         # [B, T, S_o]
        ], dim=2)
        seen = F.pad(self.context_mask[user], (1, 0), value=True).index_select(0, of_row)   # [B, 1+S_c]
        causal = torch.ones(steps, self.MAX_LEN, dtype=torch.bool, device=x.device).tril()   # [T, S_o]
        valid = torch.cat([seen.unsqueeze(1).expand(-1, steps, -1),
                           causal.unsqueeze(0).expand(x.size(0), -1, -1)], dim=2)   # [B, T, 1+S_c+S_o]
        p = torch.softmax(logit.masked_fill(~valid, float("-inf")), dim=2)
        p_video, p_ctx, p_out = p.split([1, self.CONTEXT, self.MAX_LEN], dim=2)
        ctx_taps = [t.index_select(0, of_row) for t in self._slot_taps(mem.g_context, ctx_rows, self.conv_context)]
        h = torch.cat([self._pooled_conv(p_ctx, ctx_taps, self.conv_context),
                       self._pooled_conv(p_out, self._slot_taps(mem.g_output, out_rows, self.conv_output),
                                         self.conv_output)], dim=2)                 # [B, T, W]
        video = p_video * c_video.unsqueeze(1)                                       # [B, T, m] c̃_video
        if real is not None:
            h, video = h[real], video[real]                                          # [N, W], [N, m]
        return F.relu(self.hidden(F.relu(self.video_out(video)) + h))

    def log_probs(self, users: Tensor, videos: Tensor, inputs: Tensor) -> Tensor:
        """``[B, T, H + 1]`` log P(y_t) of every step under teacher forcing (class H = EOS)."""
        return torch.log_softmax(self.out(self._decode(users, videos, inputs)), dim=-1)

    def _first_step(self, users: Tensor, videos: Tensor, mem: _TokenMemory | None = None) -> Tensor:
        go = torch.full((users.numel(), 1), self.go, dtype=torch.long, device=users.device)
        return torch.log_softmax(self.out(self._decode(users, videos, go, mem)[:, 0]), dim=-1)   # [B, H+1]

    def score(self, users, videos, cand):
        return self._first_step(users, videos).gather(1, cand)                        # [B, C]

    def scorer(self) -> ScoreFn:
        mem = self._token_memory(torch.arange(self.num_hashtag + 1, device=self.context.device))   # once

        def score(users: Tensor, videos: Tensor, cand: Tensor) -> Tensor:
            return self._first_step(users, videos, mem).gather(1, cand)

        return score

    def all_scorer(self) -> AllScoreFn:
        mem = self._token_memory(torch.arange(self.num_hashtag + 1, device=self.context.device))   # once
        return lambda users, videos: self._first_step(users, videos, mem)[:, : self.num_hashtag]   # [B, H]

    def target_sequences(self, videos: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forcing inputs ``[B, T]`` (GO, y₁ …), targets ``[B, T]`` (y₁ …, EOS) and the mask of
        real steps ``[B, T]``: the row's positive first, the video's other training hashtags in a random
        order (torch's global RNG), at most ``MAX_LEN − 1`` hashtags."""
        tags, mask = self.video_tags(videos)                                           # [B, K]
        key = torch.rand(tags.shape, device=tags.device)
        key = key.masked_fill(tags == pos.unsqueeze(1), -1.0).masked_fill(~mask, 2.0)
        seq = tags.gather(1, key.argsort(dim=1))[:, : self.MAX_LEN - 1]               # [B, T−1]
        length = mask.sum(1).clamp(max=self.MAX_LEN - 1)                               # [B]
        inputs = torch.cat([torch.full_like(seq[:, :1], self.go), seq], dim=1)        # [B, T]
        step = torch.arange(inputs.size(1), device=tags.device)
        targets = torch.cat([seq, torch.zeros_like(seq[:, :1])], dim=1)
        targets = torch.where(step == length.unsqueeze(1), self.eos, targets)        # [B, T]
        return inputs, targets, step <= length.unsqueeze(1)

    def native_loss(self, users, videos, pos):
        inputs, targets, real = self.target_sequences(videos, pos)                      # [B, T]
        o = self._decode(users, videos, inputs, real=real)                              # [N, W]
        ce = F.cross_entropy(self.out(o), targets[real], reduction="none")             # [N]
        share = 1.0 / (self.vt_ptr[videos + 1] - self.vt_ptr[videos]).float()         # [B] 1/k_v
        return (ce * share.unsqueeze(1).expand_as(real)[real]).sum()

    def extra_repr(self) -> str:
        emb, m, ch = self.SIZES[self.cfg.baseline_size]
        return (f"users={self.num_user}, hashtags={self.num_hashtag}, embed={emb}, memory={m}, channels={ch}, "
                f"context={self.CONTEXT}, max_len={self.MAX_LEN}, loss={self.cfg.loss!r}")


class USHM(_PaperBaseline):
    r"""``ushm``: user-specific hashtag model (Veit, Nickel, Belongie, van der Maaten, CVPR 2018).

    .. math::
        s(u, v, h) = \sum_k (\mathbf{P} \mathbf{f}_v)_k (\mathbf{e}_u)_k (\mathbf{e}_h)_k
        + \langle \mathbf{P} \mathbf{f}_v, \mathbf{e}_h \rangle + b_h
        = \langle \mathbf{P} \mathbf{f}_v \odot (1 + \mathbf{e}_u), \mathbf{e}_h \rangle + b_h

    a trilinear (PARAFAC, diagonal) user–content–hashtag interaction plus the user-agnostic
    content–hashtag embedding score and a hashtag bias.

    Adaptations (BASELINES.md §4):

    - *Content.* φ(x) = P f_v, a linear projection of the micro-video features to d (the original
      projected a ConvNet image representation).
    - *User context.* A learned user embedding e_u ∈ R^d, as the original.
    - *Sizes.* d = ``dim_latent``; small, so ``paper`` and ``small`` are the same.
    - *Loss* (``native``): softmax cross-entropy over all H hashtags, one positive per training row
      (the recalled original, in the style of FAIR's hashtag work; a video with k hashtags gives k
      terms, i.e. k × the cross-entropy against the uniform target over its hashtags).

    Args:
        cfg (Config): ``dim_latent``, ``loss``.
        train (Tensor): ``[R, 3]`` training rows.
        features (Tensor): ``[V, F]`` video features (a non-persistent buffer).
        num_user (int), num_hashtag (int): U, H.
    """

    def __init__(self, cfg: Config, train: Tensor, features: Tensor, num_user: int, num_hashtag: int) -> None:
        super().__init__(cfg, train, features, num_user, num_hashtag)
        d = cfg.dim_latent
        self.proj = nn.Linear(features.size(1), d, bias=False)                         # P
        self.user_emb = nn.Parameter(torch.empty(num_user, d))                         # e_u, [U, d]
        self.tag_emb = nn.Parameter(torch.empty(num_hashtag, d))                       # e_h, [H, d]
        self.tag_bias = nn.Parameter(torch.empty(num_hashtag))                         # b_h, [H]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.proj.weight, self.user_emb, self.tag_emb):
            nn.init.xavier_uniform_(p)
        nn.init.zeros_(self.tag_bias)

    def query(self, users: Tensor, videos: Tensor) -> Tensor:
        """``[B, d]``: P f_v ⊙ (1 + e_u)."""
        return self.proj(self.features[videos]) * (1 + self.user_emb[users])

    def score(self, users, videos, cand):
        q = self.query(users, videos)                                                  # [B, d]
        return torch.einsum("bd,bcd->bc", q, self.tag_emb[cand]) + self.tag_bias[cand]   # [B, C]

    def score_all(self, users, videos):
        return torch.addmm(self.tag_bias, self.query(users, videos), self.tag_emb.T)     # [B, H]

    def native_loss(self, users, videos, pos):
        logits = self.query(users, videos) @ self.tag_emb.T + self.tag_bias            # [B, H]
        return F.cross_entropy(logits, pos, reduction="sum")

    def extra_repr(self) -> str:
        return (f"users={self.num_user}, hashtags={self.num_hashtag}, dim={self.tag_emb.size(1)}, "
                f"loss={self.cfg.loss!r}")


PAPER_BASELINES = {"utm": UTM, "contagnet": ConTagNet, "csmn": CSMN, "ushm": USHM}
"""``--model_name`` → class; each is built as ``cls(cfg, train, features, num_user=…, num_hashtag=…)``."""
