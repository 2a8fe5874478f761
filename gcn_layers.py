"""Message-passing layers of GCN-PHR (SPEC §3) and of the release's variant (SPEC §3.1).

The GCN-PHR graph is static: it is built once from the training rows (``data_load.PairGraph``) and
stored in CSR form, so every neighbourhood reduction here is a segment reduction over a precomputed
``ptr`` array (``torch_geometric.utils.segment`` / ``softmax(ptr=...)``); there is no Python loop over
pairs, edges or nodes.

- :func:`segment_aggr` — AGG ∈ {mean, max, add} over CSR segments, with an optional item mask.
- :class:`PairAttention` — the "Attention Net" of SPEC §3: for a pair p = (u, h), weights the
  videos V(p) against a query and returns the message m_p.
- :class:`PHRConv` — one aggregation layer of SPEC §3 (user side and hashtag side).
- :class:`ReleasedConv` — one round of the release's architecture (SPEC §3.1): GATConv on
  video→user/hashtag edges, then SAGEConv on user↔hashtag edges, both stock PyG layers.

Shape legend (as in design.md): U users, H hashtags, V videos, P user–hashtag pairs,
E pair–video edges (one per training row), d latent size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, SAGEConv
from torch_geometric.utils import segment, softmax

if TYPE_CHECKING:
    from data_load import PairGraph

AGGRS = ("mean", "max", "add")
MESSAGES = ("both", "video", "hashtag")
NEGATIVE_SLOPE = 0.01  # LReLU slope of SPEC §3


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _compact_ptr(ptr: Tensor, mask: Tensor) -> Tensor:
    """CSR offsets of the same segments after dropping the items where ``mask`` is False.

    ``ptr`` [S+1], ``mask`` [N] bool → [S+1]: position of each old boundary among the kept items.
    """
    kept_before = torch.cat([mask.new_zeros(1, dtype=torch.long), mask.long().cumsum(0)])  # [N+1]
    return kept_before[ptr]  # [S+1]


def segment_aggr(x: Tensor, ptr: Tensor, reduce: str, mask: Tensor | None = None) -> Tensor:
    r"""Reduces the items of every CSR segment: ``out[s] = AGG(x[ptr[s]:ptr[s+1]])``.

    Items where ``mask`` is False are left out. An empty (or fully masked) segment gives a zero row
    for every ``reduce``, ``"max"`` included, so no ``-inf`` or NaN reaches the caller.

    Args:
        x (Tensor): item features, sorted by segment.
        ptr (Tensor): CSR offsets, ``ptr[0] = 0`` and ``ptr[-1] = N``.
        reduce (str): ``"mean"``, ``"max"`` or ``"add"``.
        mask (Tensor, optional): bool, False = leave the item out. (default: :obj:`None`)

    Shapes:
        x [N, d], ptr [S+1], mask [N] → [S, d]
    """
    _check_choice("reduce", reduce, AGGRS)
    if mask is not None:
        ptr = _compact_ptr(ptr, mask)  # [S+1]
        x = x[mask]  # [N', d]
    out = segment(x, ptr, reduce="sum" if reduce == "add" else reduce)  # [S, d]
    empty = (ptr[1:] == ptr[:-1]).unsqueeze(-1)  # [S, 1]
    return out.masked_fill(empty, 0.0)


class PairAttention(nn.Module):
    r"""Attention over the videos of each user–hashtag pair ("Attention Net", SPEC §3; Wei et al.,
    *Personalized Hashtag Recommendation for Micro-videos*, ACM MM 2019).

    For pair :math:`p` with query :math:`\mathbf{q}_p` (the hashtag for the user side, the user for
    the hashtag side) and video representations :math:`\mathbf{z}_v`, :math:`v \in V(p)`:

    .. math::
        e_{p,v} = \mathbf{a}^{\top} \mathrm{LReLU}\big(\mathbf{A}[\mathbf{q}_p \,\|\, \mathbf{z}_v]
        + \mathbf{b}\big), \qquad
        \alpha_{p,v} = \operatorname{softmax}_{v \in V(p)} e_{p,v}, \qquad
        \mathbf{m}_p = \sum_{v \in V(p)} \alpha_{p,v} \mathbf{z}_v .

    :math:`\mathbf{A}[\mathbf{q} \| \mathbf{z}]` is computed as
    :math:`\mathbf{A}_q \mathbf{q} + \mathbf{A}_z \mathbf{z}` with :math:`\mathbf{A}_z \mathbf{z}`
    evaluated once per video and gathered per edge. Hidden edges (``edge_mask`` False) take no
    part in the softmax and get :math:`\alpha = 0`; a pair whose edges are all hidden gets
    :math:`\mathbf{m}_p = 0`. With ``attention=False`` (ablation, SPEC §3.2) the weights are uniform
    over the visible videos of the pair, :math:`\alpha_{p,v} = 1/|V(p)|`, and the module has no
    parameters.

    Args:
        dim (int): latent size d of queries and videos.
        attention (bool, optional): learned attention (True) or uniform weights (False).
            (default: :obj:`True`)

    Shapes:
        - **input:** query [P, d], z [V, d], graph (``PairGraph``), edge_mask [E] bool (optional)
        - **output:** m [P, d], alpha [E] (in ``graph.pv_video`` order)
    """

    def __init__(self, dim: int, attention: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.attention = attention
        if attention:
            self.lin_query = nn.Linear(dim, dim, bias=True)  # A_q, carries the bias b of A
            self.lin_video = nn.Linear(dim, dim, bias=False)  # A_z
            self.att = nn.Linear(dim, 1, bias=False)  # a
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero bias."""
        if self.attention:
            for lin in (self.lin_query, self.lin_video, self.att):
                nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(self.lin_query.bias)

    def forward(
        self, query: Tensor, z: Tensor, graph: PairGraph, edge_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        ptr, video = graph.pv_ptr, graph.pv_video  # [P+1], [E]
        if edge_mask is not None:
            ptr = _compact_ptr(ptr, edge_mask)  # [P+1] over the visible edges
            video = video[edge_mask]  # [E']
        count = ptr[1:] - ptr[:-1]  # [P] visible videos per pair
        edge_pair = torch.repeat_interleave(count, output_size=video.numel())  # [E'] pair of each edge

        if self.attention:
            hidden = self.lin_query(query)[edge_pair] + self.lin_video(z)[video]  # [E', d]
            score = self.att(F.leaky_relu(hidden, NEGATIVE_SLOPE)).squeeze(-1)  # [E']
            alpha = softmax(score, ptr=ptr)  # [E']
        else:
            alpha = count.clamp(min=1).to(z.dtype).reciprocal()[edge_pair]  # [E']

        message = segment_aggr(alpha.unsqueeze(-1) * z[video], ptr, "add")  # [E', d] → [P, d]
        if edge_mask is not None:
            alpha = z.new_zeros(edge_mask.numel()).masked_scatter(edge_mask, alpha)  # [E]
        return message, alpha

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.dim}, attention={self.attention})"


class PHRConv(nn.Module):
    r"""One aggregation layer of GCN-PHR (SPEC §3; Wei et al., ACM MM 2019, Figure 2).

    With :math:`\mathcal{P}(u)` the pairs of user :math:`u`, :math:`\mathcal{P}(h)` the pairs of
    hashtag :math:`h`, :math:`\mathbf{m}^{user}_p` / :math:`\mathbf{m}^{tag}_p` the messages of two
    :class:`PairAttention` modules (query :math:`\mathbf{x}_h` / :math:`\mathbf{x}_u` of the pair):

    .. math::
        \mathbf{x}_u' &= \mathrm{LReLU}\Big(\mathbf{W}_s \mathbf{x}_u + \mathbf{b}
            + \mathbf{W}_t \operatorname{AGG}_{p=(u,h) \in \mathcal{P}(u)} \mathbf{x}_h
            + \mathbf{W}_m \operatorname{AGG}_{p \in \mathcal{P}(u)} \mathbf{m}^{user}_p\Big)

        \mathbf{x}_h' &= \mathrm{LReLU}\Big(\mathbf{W}'_s \mathbf{x}_h + \mathbf{b}'
            + \mathbf{W}'_t \operatorname{AGG}_{p=(u,h) \in \mathcal{P}(h)} \mathbf{x}_u
            + \mathbf{W}'_m \operatorname{AGG}_{p \in \mathcal{P}(h)} \mathbf{m}^{tag}_p\Big)

    AGG is applied feature-wise; LReLU has slope 0.01. Only the self term carries a bias
    (:math:`\mathbf{b}`, :math:`\mathbf{b}'`): one bias per update, as the three terms are summed.
    A pair whose pair–video edges are all hidden by ``edge_mask`` is inactive and is left out of
    both aggregations; a node with no active pair aggregates to zero, so its output is
    :math:`\mathrm{LReLU}(\mathbf{W}_s \mathbf{x} + \mathbf{b})`.

    Args:
        dim (int): latent size d (input and output).
        aggr (str, optional): AGG, ``"mean"``, ``"max"`` or ``"add"``. (default: :obj:`"mean"`)
        attention (bool, optional): learned attention (True) or uniform weights over V(p)
            (False, ablation of SPEC §3.2). (default: :obj:`True`)
        messages (str, optional): ``"both"``; ``"video"`` drops the :math:`\mathbf{W}_t` terms (no
            hashtag–user messages); ``"hashtag"`` drops the :math:`\mathbf{W}_m` terms and the
            attention modules (no video messages). (default: :obj:`"both"`)

    Shapes:
        - **input:** x_user [U, d], x_tag [H, d], z [V, d], graph (``PairGraph``),
          edge_mask [E] bool (optional)
        - **output:** x_user' [U, d], x_tag' [H, d]; with ``return_attention=True`` also
          (alpha_user [E], alpha_tag [E]), both None when ``messages="hashtag"``
    """

    def __init__(
        self, dim: int, aggr: str = "mean", attention: bool = True, messages: str = "both"
    ) -> None:
        super().__init__()
        _check_choice("aggr", aggr, AGGRS)
        _check_choice("messages", messages, MESSAGES)
        self.dim = dim
        self.aggr = aggr
        self.attention = attention
        self.messages = messages
        self.use_neighbours = messages in ("both", "hashtag")  # W_t terms
        self.use_videos = messages in ("both", "video")  # W_m terms and attention

        self.user_self = nn.Linear(dim, dim, bias=True)  # W_s, b
        self.tag_self = nn.Linear(dim, dim, bias=True)  # W'_s, b'
        # Dropped terms are None, so parameters() holds only what forward uses.
        self.user_nbr = nn.Linear(dim, dim, bias=False) if self.use_neighbours else None  # W_t
        self.tag_nbr = nn.Linear(dim, dim, bias=False) if self.use_neighbours else None  # W'_t
        self.user_msg = nn.Linear(dim, dim, bias=False) if self.use_videos else None  # W_m
        self.tag_msg = nn.Linear(dim, dim, bias=False) if self.use_videos else None  # W'_m
        # Queries: the pair's hashtag for the user side, the pair's user for the hashtag side.
        self.user_att = PairAttention(dim, attention=attention) if self.use_videos else None
        self.tag_att = PairAttention(dim, attention=attention) if self.use_videos else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero biases (attention modules included)."""
        for lin in (self.user_self, self.tag_self, self.user_nbr, self.tag_nbr,
                    self.user_msg, self.tag_msg):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
        nn.init.zeros_(self.user_self.bias)
        nn.init.zeros_(self.tag_self.bias)
        for att in (self.user_att, self.tag_att):
            if att is not None:
                att.reset_parameters()

    def _update(
        self, x_self: Tensor, nbr: Tensor, msg: Tensor | None, ptr: Tensor, active: Tensor | None,
        lin_self: nn.Linear, lin_nbr: nn.Linear | None, lin_msg: nn.Linear | None,
    ) -> Tensor:
        """One side's update: ``nbr``/``msg`` are per-pair rows [P, d] sorted by this side's node."""
        terms = [(lin, rows) for lin, rows in ((lin_nbr, nbr), (lin_msg, msg)) if lin is not None]
        per_pair = torch.cat([rows for _, rows in terms], dim=-1)  # [P, k·d], k kept AGG terms
        agg = segment_aggr(per_pair, ptr, self.aggr, mask=active)  # [N, k·d]
        out = lin_self(x_self)  # [N, d]
        for (lin, _), part in zip(terms, agg.split(self.dim, dim=-1)):  # k × [N, d]
            out = out + lin(part)
        return F.leaky_relu(out, NEGATIVE_SLOPE)

    def forward(
        self,
        x_user: Tensor,
        x_tag: Tensor,
        z: Tensor,
        graph: PairGraph,
        edge_mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, tuple[Tensor | None, Tensor | None]]:
        tag_of_pair = x_tag[graph.pair_hashtag]  # [P, d] hashtag of each pair (user-side input)
        user_of_pair = x_user[graph.pair_user]  # [P, d] user of each pair (hashtag-side input)

        active = None  # [P] bool: pair has at least one visible pair–video edge
        if edge_mask is not None:
            visible_ptr = _compact_ptr(graph.pv_ptr, edge_mask)  # [P+1]
            active = visible_ptr[1:] > visible_ptr[:-1]  # [P]

        msg_user = msg_tag = alpha_user = alpha_tag = None
        if self.use_videos:
            msg_user, alpha_user = self.user_att(tag_of_pair, z, graph, edge_mask)  # [P, d], [E]
            msg_tag, alpha_tag = self.tag_att(user_of_pair, z, graph, edge_mask)  # [P, d], [E]

        # Users: pairs are already sorted by (user, hashtag), segments user_ptr [U+1].
        x_user_new = self._update(
            x_user, tag_of_pair, msg_user, graph.user_ptr, active,
            self.user_self, self.user_nbr, self.user_msg,
        )  # [U, d]
        # Hashtags: reorder the pairs by (hashtag, user) with tag_perm, segments tag_ptr [H+1].
        perm = graph.tag_perm  # [P]
        x_tag_new = self._update(
            x_tag, user_of_pair[perm], None if msg_tag is None else msg_tag[perm], graph.tag_ptr,
            None if active is None else active[perm],
            self.tag_self, self.tag_nbr, self.tag_msg,
        )  # [H, d]

        if return_attention:
            return x_user_new, x_tag_new, (alpha_user, alpha_tag)
        return x_user_new, x_tag_new

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.dim}, aggr={self.aggr!r}, "
                f"attention={self.attention}, messages={self.messages!r})")


class ReleasedConv(nn.Module):
    r"""One round of the release's architecture (variant ``released``, SPEC §3.1): a GAT convolution
    on video→user and video→hashtag edges, then a GraphSAGE convolution on user↔hashtag edges,
    LReLU (slope 0.01) after each. Both are torch-geometric's stock layers.

    As in the release, users, hashtags and videos are stacked into one node matrix
    :math:`\mathbf{X} = [\mathbf{X}_{user}; \mathbf{X}_{tag}; \mathbf{Z}]` and both convolutions act
    on all of it, one shared GATConv for both video→node edge types:

    .. math::
        \mathbf{x}_i' &= \mathrm{LReLU}\Big(\sum_{j \in \mathcal{N}_{vid}(i) \cup \{i\}}
            \alpha_{i,j} \boldsymbol{\Theta} \mathbf{x}_j + \mathbf{b}\Big), \qquad
            \alpha_{i,j} = \operatorname{softmax}_j \mathrm{LReLU}_{0.2}\big(
            \mathbf{a}^{\top}[\boldsymbol{\Theta}\mathbf{x}_i \,\|\, \boldsymbol{\Theta}\mathbf{x}_j]\big)

        \mathbf{x}_i'' &= \mathrm{LReLU}\Big(\mathbf{W}_1 \mathbf{x}_i'
            + \mathbf{W}_2 \operatorname{AGG}_{j \in \mathcal{N}_{uh}(i)} \mathbf{x}_j' + \mathbf{b}'\Big)

    Self-loops: GATConv adds them itself (``add_self_loops=True``), which is only meaningful
    because the graph is homogeneous here — a bipartite (video, user) GATConv could not have them;
    so a node's own representation competes with its videos inside the softmax, as in the release.
    Videos receive only their self-loop and the SAGE root term; their rows are returned so a stack
    of rounds can carry them on, as the release did. AGG (``aggr``) is passed to SAGEConv; the GAT
    aggregation is a softmax-weighted sum by construction and does not depend on ``aggr``.

    Args:
        dim (int): latent size d (input and output).
        aggr (str, optional): SAGEConv neighbourhood aggregation, ``"mean"``, ``"max"`` or
            ``"add"``. (default: :obj:`"mean"`)
        heads (int, optional): GAT attention heads, averaged (the release's ``--num_heads``).
            (default: :obj:`1`)

    Shapes:
        - **input:** x_user [U, d], x_tag [H, d], z [V, d], video_user [2, E_vu] (row 0 video,
          row 1 user), video_tag [2, E_vh] (row 0 video, row 1 hashtag), pair_index [2, P]
          (row 0 user, row 1 hashtag; used in both directions); all ids local per type
        - **output:** x_user' [U, d], x_tag' [H, d], z' [V, d]
    """

    def __init__(self, dim: int, aggr: str = "mean", heads: int = 1) -> None:
        super().__init__()
        _check_choice("aggr", aggr, AGGRS)
        self.dim = dim
        self.aggr = aggr
        self.heads = heads
        self.gat = GATConv(dim, dim, heads=heads, concat=False, add_self_loops=True)
        self.sage = SAGEConv(dim, dim, aggr="sum" if aggr == "add" else aggr)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyG's resets (Glorot = Xavier-uniform for GAT), then Xavier-uniform SAGE weights."""
        self.gat.reset_parameters()
        self.sage.reset_parameters()
        nn.init.xavier_uniform_(self.sage.lin_l.weight)
        nn.init.xavier_uniform_(self.sage.lin_r.weight)

    def forward(
        self,
        x_user: Tensor,
        x_tag: Tensor,
        z: Tensor,
        video_user: Tensor,
        video_tag: Tensor,
        pair_index: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        num_user, num_tag = x_user.size(0), x_tag.size(0)
        video_offset = num_user + num_tag  # global row of video 0
        x = torch.cat([x_user, x_tag, z], dim=0)  # [U+H+V, d]

        video_edges = torch.cat(
            [video_user + video_user.new_tensor([[video_offset], [0]]),
             video_tag + video_tag.new_tensor([[video_offset], [num_user]])],
            dim=1,
        )  # [2, E_vu + E_vh] video → user / hashtag, global rows
        user_tag = pair_index + pair_index.new_tensor([[0], [num_user]])  # [2, P] user → hashtag
        pair_edges = torch.cat([user_tag, user_tag.flip(0)], dim=1)  # [2, 2P] both directions

        x = F.leaky_relu(self.gat(x, video_edges), NEGATIVE_SLOPE)  # [U+H+V, d]
        x = F.leaky_relu(self.sage(x, pair_edges), NEGATIVE_SLOPE)  # [U+H+V, d]
        return x[:num_user], x[num_user:video_offset], x[video_offset:]  # [U, d], [H, d], [V, d]

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.dim}, aggr={self.aggr!r}, heads={self.heads})"
