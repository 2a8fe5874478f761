r"""Sampled-subgraph training of GCN-PHR (``--num_neigh K``): per mini-batch, propagate only through the
pairs reachable from the batch's users and hashtags, at most K sampled pairs per node and layer.

The authors' early code sampled at most K neighbours per node instead of propagating the whole graph.
Here the sampling is GraphSAGE-style (Hamilton et al., NeurIPS 2017), layer by layer from the output
nodes inward, on the user–hashtag pair graph of SPEC §3 (``data_load.PairGraph``):

- the **outputs** of layer L are the batch's users and its positive and negative hashtags;
- the destination nodes of layer l, :math:`\mathcal{U}_l` and :math:`\mathcal{H}_l`, each keep
  :math:`\min(K, \deg)` of their pairs, drawn uniformly without replacement; a user aggregates its
  kept pairs (their hashtags, and their videos' messages with the hashtag as query), a hashtag its own;
- layer l reads :math:`\mathbf{x}^{l-1}` of its destinations (the self term) and of the other end of
  every kept pair, so :math:`\mathcal{U}_{l-1} = \mathcal{U}_l \cup \{u : (u, h) \text{ kept by }
  h \in \mathcal{H}_l\}` and :math:`\mathcal{H}_{l-1}` alike; layer 1 reads the id embeddings.

A pair's videos :math:`V(p)` are not sampled: the attention runs over all of them, as in full-graph
propagation. With K at least the largest degree every destination keeps all its pairs, and a batch's
loss and gradients are those of full-graph training (``tests/test_sampling.py``).

Each layer's kept pairs become a small :class:`Block`: a ``PairGraph`` on block-local ids, with the
destinations first. A pair kept by a user is attached to that user and to a *neighbour copy* of its
hashtag, a pair kept by a hashtag to that hashtag and to a neighbour copy of its user, so a
destination's segment holds exactly its own kept pairs even when the same pair is also kept from the
other side, and ``PHRConv`` (called with the destinations as ``outputs``) runs on the block unchanged.

torch-geometric's neighbour loaders (``NeighborLoader``, ``HGTLoader``) are not used: their sampling
runs in the compiled ``pyg-lib`` or ``torch-sparse``, which this project does without. Everything here is
vectorised torch: the only Python loops run over the layers and over the K draw positions of Floyd's
sampling algorithm, never over nodes or pairs.

Shape legend: U, H users and hashtags of the full graph, P pairs, E pair–video edges, N destination
nodes of one side, S kept pairs of one side, P_b / E_b / V_s pairs, edges and videos of a block or step,
K ``num_neigh``, d latent size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from data_load import PairGraph
from gcn_layers import PairIndex


def _ptr(counts: Tensor) -> Tensor:
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _offsets_within(counts: Tensor) -> Tensor:
    """``[sum counts]`` position of every item inside its segment: 0, 1, …, counts[i] − 1 for each i."""
    total = int(counts.sum())
    start = torch.repeat_interleave(_ptr(counts)[:-1], counts, output_size=total)  # [total]
    return torch.arange(total, device=counts.device) - start


def floyd_sample(size: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    r"""``k`` distinct positions drawn uniformly without replacement from ``[0, size[i])`` for every row i
    (Floyd's algorithm, Bentley 1987), vectorised over the rows; every row needs ``size[i] ≥ k``.

    For :math:`j = n-k, \dots, n-1`: draw :math:`t` uniform in :math:`[0, j]`; keep :math:`t` unless it is
    already kept, else keep :math:`j`. Every k-subset comes out with probability :math:`1/\binom{n}{k}`, at
    the cost of k draws per row whatever its size. The positions of a row are not sorted.

    Args:
        size (Tensor): ``[N]`` int64 population size of each row.
        k (int): draws per row.
        generator (torch.Generator, optional): source of the draws, on ``size``'s device.

    Shapes: size [N] → [N, k]
    """
    chosen = size.new_empty(size.numel(), k)  # [N, k]
    for i in range(k):
        j = size - k + i  # [N] the largest position this round may take
        t = (torch.rand(size.numel(), dtype=torch.float64, generator=generator, device=size.device)
             * (j + 1)).long()  # [N] uniform in [0, j]
        t = torch.minimum(t, j)  # rounding of the product may reach j + 1
        taken = (chosen[:, :i] == t.unsqueeze(1)).any(1)  # [N]
        chosen[:, i] = torch.where(taken, j, t)
    return chosen


class Block(NamedTuple):
    """One layer of a sampled subgraph: the kept pairs of its destinations, on block-local ids.

    Block users are the ``num_dst_user`` destinations, then the users that only feed a destination
    hashtag (neighbour copies); block hashtags alike. Pairs are sorted by (block user, block hashtag)
    as ``PairGraph`` requires; ``graph.pv_video`` indexes the step's video rows
    (:attr:`SampledSubgraph.video_rows`) and ``graph.pv_row`` holds the training row of every edge.
    """

    graph: PairGraph
    index: PairIndex  # the patterns of ``graph``, for PHRConv
    num_dst_user: int
    num_dst_tag: int
    user_ids: Tensor  # [n_bu] global (local-per-type) user id of each block user
    tag_ids: Tensor  # [n_bh] hashtag id of each block hashtag
    user_from: Tensor  # [n_bu] row of each block user in the previous layer's outputs (x^{l-1})
    tag_from: Tensor  # [n_bh] row of each block hashtag in the previous layer's outputs
    pairs: Tensor  # [P_b] the full graph's pair behind each block pair

    @property
    def outputs(self) -> tuple[Tensor, Tensor]:
        """The destinations, as ``PHRConv``'s ``outputs``: ``(arange(num_dst_user), arange(num_dst_tag))``."""
        device = self.user_ids.device
        return (torch.arange(self.num_dst_user, device=device), torch.arange(self.num_dst_tag, device=device))


class SampledSubgraph(NamedTuple):
    """The blocks of one mini-batch, layer 1 first.

    ``in_user`` / ``in_tag``: the sorted users / hashtags whose id embeddings layer 1 reads (rows of
    ``x^0``); ``out_user`` / ``out_tag``: the sorted distinct outputs, the rows the last block gives;
    ``video_rows``: the sorted rows of ``z`` (the model's feature rows) every block reads, the batch's
    own videos included; ``video_at``: the position of each given batch video in ``video_rows``.
    """

    blocks: list[Block]
    in_user: Tensor  # [U_0]
    in_tag: Tensor  # [H_0]
    out_user: Tensor  # [U_L]
    out_tag: Tensor  # [H_L]
    video_rows: Tensor  # [V_s]
    video_at: Tensor  # [B]


class PairSampler(nn.Module):
    r"""Draws the layer blocks of a mini-batch from a pair graph (module docstring): at most ``num_neigh``
    pairs per destination node and layer, uniformly without replacement, from a ``torch.Generator``
    seeded with ``seed`` (created on the buffers' device at first use; :meth:`generator`).

    A container of non-persistent buffers (it follows ``.to(device)`` and is not saved): the pair graph's
    CSR segments per user and per hashtag, each pair's user and hashtag, and its edges' videos — as rows
    of the model's feature matrix — and training rows.

    Args:
        graph (PairGraph): the training pair graph.
        num_neigh (int): K, the most pairs a node keeps per layer (≥ 1).
        seed (int): seed of the generator.
        video_row (Tensor, optional): ``[V]`` the row of each video in the model's features (default:
            row v is video v).

    Shapes:
        - **input** (:meth:`sample`): users [B], tags [T] (repeats allowed), num_layers L,
          videos [B'] (optional): videos the step also needs (the batch's own)
        - **output:** :class:`SampledSubgraph` with L blocks
    """

    def __init__(self, graph: PairGraph, num_neigh: int, seed: int, video_row: Tensor | None = None) -> None:
        super().__init__()
        if num_neigh < 1:
            raise ValueError(f"num_neigh must be at least 1, got {num_neigh}")
        self.num_neigh, self.seed = num_neigh, seed
        self._generator: torch.Generator | None = None
        buffers = {"user_ptr": graph.user_ptr, "tag_ptr": graph.tag_ptr, "tag_perm": graph.tag_perm,
                   "pair_user": graph.pair_user, "pair_tag": graph.pair_hashtag, "pv_ptr": graph.pv_ptr,
                   "pv_video": graph.pv_video if video_row is None else video_row[graph.pv_video],
                   "pv_row": graph.pv_row,
                   "video_row": torch.arange(graph.num_video) if video_row is None else video_row}
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    def generator(self) -> torch.Generator:
        """The generator of the draws, on the buffers' device (made, seeded with ``seed``, at first use or
        after the module moved)."""
        device = self.pair_user.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def feature_rows(self, features: Tensor, rows: Tensor) -> Tensor:
        """``features[rows]``, written into a buffer kept from one step to the next: a fresh ``[V_s, F]``
        block would be allocated, and page-faulted in, at every step (3–4× the time of the copy itself).
        The result is overwritten by the next call. Shapes: features [V, F], rows [V_s] → [V_s, F]"""
        need = (rows.numel(), features.size(1))
        buffer = getattr(self, "_rows_buffer", None)
        if buffer is None or buffer.size(0) < need[0] or buffer.size(1) != need[1] or buffer.dtype != features.dtype \
                or buffer.device != features.device:
            buffer = features.new_empty(int(1.1 * need[0]) + 1, need[1])  # room for the next steps' sizes
            self._rows_buffer = buffer
        return torch.index_select(features, 0, rows, out=buffer[: need[0]])

    def reseed(self, seed: int) -> None:
        """Restart the draws from ``seed`` (``train.py``: one seed per process under DDP)."""
        self.seed = seed
        self._generator = None

    def sample_pairs(self, nodes: Tensor, side: str) -> tuple[Tensor, Tensor]:
        """The kept pairs of ``nodes`` [N] (distinct users for ``side="user"``, hashtags for ``"tag"``):
        all pairs of a node with at most K, else K of them uniformly without replacement (:func:`floyd_sample`).

        Returns ``owner`` [S] (the position in ``nodes`` of each kept pair's node, non-decreasing) and
        ``pair`` [S] (the kept pair ids)."""
        k = self.num_neigh
        ptr = self.user_ptr if side == "user" else self.tag_ptr
        start, degree = ptr[nodes], ptr[nodes + 1] - ptr[nodes]  # [N], [N]
        take = degree.clamp(max=k)  # [N]
        owner = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), take,
                                        output_size=int(take.sum()))  # [S]
        offset = _offsets_within(take)  # [S] 0..take-1 per node
        big = degree > k  # [N] nodes that keep a sample
        if bool(big.any()):
            drawn = floyd_sample(degree[big], k, self.generator())  # [N_big, K]
            big_rank = big.long().cumsum(0) - 1  # [N] row of each big node in drawn
            sampled = big[owner]  # [S]
            offset[sampled] = drawn[big_rank[owner[sampled]], offset[sampled]]
        position = start[owner] + offset  # [S] in this side's pair order
        return owner, (position if side == "user" else self.tag_perm[position])

    def _edges(self, pairs: Tensor) -> Tensor:
        """``[E_b]`` the full graph's edges of ``pairs`` [P_b], pair after pair."""
        count = self.pv_ptr[pairs + 1] - self.pv_ptr[pairs]  # [P_b]
        total = int(count.sum())
        return torch.repeat_interleave(self.pv_ptr[pairs], count, output_size=total) + _offsets_within(count)

    def sample(self, users: Tensor, tags: Tensor, num_layers: int, videos: Tensor | None = None) -> SampledSubgraph:
        """The ``num_layers`` blocks of a mini-batch whose outputs are ``users`` [B] and ``tags`` [T] (repeats
        allowed), drawn from the output layer inward (module docstring); ``videos`` [B'] (optional) are videos
        the step needs besides the blocks' (the batch's own), included in ``video_rows``."""
        dst_user, dst_tag = torch.unique(users), torch.unique(tags)  # outputs of layer L
        out_user, out_tag = dst_user, dst_tag
        layers = []  # from layer L inward
        for _ in range(num_layers):
            u_owner, u_pair = self.sample_pairs(dst_user, "user")  # [S_u] pairs kept by users
            t_owner, t_pair = self.sample_pairs(dst_tag, "tag")  # [S_t] pairs kept by hashtags
            nbr_tag, nbr_tag_at = torch.unique(self.pair_tag[u_pair], return_inverse=True)  # [n_nh], [S_u]
            nbr_user, nbr_user_at = torch.unique(self.pair_user[t_pair], return_inverse=True)  # [n_nu], [S_t]
            n_du, n_dt = dst_user.numel(), dst_tag.numel()
            b_user = torch.cat([u_owner, n_du + nbr_user_at])  # [P_b] block user of each kept pair
            b_tag = torch.cat([n_dt + nbr_tag_at, t_owner])  # [P_b] block hashtag
            user_ids, tag_ids = torch.cat([dst_user, nbr_user]), torch.cat([dst_tag, nbr_tag])  # [n_bu], [n_bh]
            order = torch.argsort(b_user * tag_ids.numel() + b_tag)  # (user, hashtag) order; keys are distinct
            dst_user, user_from = torch.unique(user_ids, return_inverse=True)  # outputs of layer l − 1
            dst_tag, tag_from = torch.unique(tag_ids, return_inverse=True)
            layers.append((n_du, n_dt, user_ids, tag_ids, b_user[order], b_tag[order],
                           torch.cat([u_pair, t_pair])[order], user_from, tag_from))
        edges = [self._edges(layer[6]) for layer in layers]  # [E_b] per layer
        extra = [] if videos is None else [self.video_row[videos]]
        video_rows, video_of = torch.unique(torch.cat([self.pv_video[e] for e in edges] + extra),
                                            return_inverse=True)  # [V_s], [sum E_b + B']
        video_of = video_of.split([e.numel() for e in edges] + [v.numel() for v in extra])
        blocks = []
        for (n_du, n_dt, user_ids, tag_ids, b_user, b_tag, pairs, user_from, tag_from), edge, video in zip(
                layers, edges, video_of):
            n_bu, n_bh = user_ids.numel(), tag_ids.numel()
            graph = PairGraph(
                num_user=n_bu, num_hashtag=n_bh, num_video=video_rows.numel(), pair_user=b_user, pair_hashtag=b_tag,
                user_ptr=_ptr(torch.bincount(b_user, minlength=n_bu)),
                tag_perm=torch.argsort(b_tag * n_bu + b_user),
                tag_ptr=_ptr(torch.bincount(b_tag, minlength=n_bh)),
                pv_ptr=_ptr(self.pv_ptr[pairs + 1] - self.pv_ptr[pairs]), pv_video=video,
                pv_row=self.pv_row[edge], row_pair=b_user.new_empty(0))
            blocks.append(Block(graph=graph, index=PairIndex(graph), num_dst_user=n_du, num_dst_tag=n_dt,
                                user_ids=user_ids, tag_ids=tag_ids, user_from=user_from, tag_from=tag_from,
                                pairs=pairs))
        return SampledSubgraph(blocks=blocks[::-1], in_user=dst_user, in_tag=dst_tag, out_user=out_user,
                               out_tag=out_tag, video_rows=video_rows,
                               video_at=video_of[-1] if videos is not None else video_rows.new_empty(0))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_neigh={self.num_neigh}, seed={self.seed})"
