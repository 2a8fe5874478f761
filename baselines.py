"""Reference rankers every comparison table carries (SPEC §4, last item).

- ``pop``: global training frequency of the hashtag;
- ``userpop``: how often the user gave the hashtag to her training videos, global frequency breaking ties;
- ``content``: a content-only model :math:`s = \\langle \\mathbf{P} \\mathbf{f}_v, \\mathbf{e}_h \\rangle`;
- ``mf``: BPR matrix factorisation on user–hashtag pairs, :math:`s = \\langle \\mathbf{e}_u, \\mathbf{e}_h \\rangle`.

All follow :class:`model.Ranker`, so they share data, negatives, loop, checkpoints and evaluation
with GCN-PHR. Shape legend as in ``model.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from data_load import PairGraph
from model import Config, Ranker, ScoreFn, bpr_loss


class Popularity(Ranker):
    """``pop``: s(u, v, h) = number of training rows with hashtag h. Nothing to train."""

    trainable = False

    def __init__(self, train: Tensor, num_hashtag: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.bincount(train[:, 2], minlength=num_hashtag).float())

    def scorer(self) -> ScoreFn:
        return lambda users, videos, cand: self.count[cand]


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
        return bpr_loss((v * self.tag_emb[pos]).sum(-1), (v * self.tag_emb[neg]).sum(-1))

    def scorer(self) -> ScoreFn:
        def score(users: Tensor, videos: Tensor, cand: Tensor) -> Tensor:
            v = self.proj(self.features[videos])                                 # [B, d]
            return torch.einsum("bd,bcd->bc", v, self.tag_emb[cand])             # [B, C]
        return score


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
        return bpr_loss((u * self.tag_emb[pos]).sum(-1), (u * self.tag_emb[neg]).sum(-1))

    def scorer(self) -> ScoreFn:
        def score(users: Tensor, videos: Tensor, cand: Tensor) -> Tensor:
            return torch.einsum("bd,bcd->bc", self.user_emb[users], self.tag_emb[cand])
        return score
