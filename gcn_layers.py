"""Message-passing layers of GCN-PHR (SPEC §3) and of the release's variant (SPEC §3.1).

The GCN-PHR graph is static: it is built once from the training rows (``data_load.PairGraph``), and
every index the layers need is derived from it once (:class:`PairIndex`), in CSR form together with its
transpose. Every neighbourhood reduction and every gather is then one sparse–dense product
(:func:`csr_matmul`) whose backward pass is the product with the transposed pattern: no
``scatter``/``index_put`` accumulation, no Python loop over pairs, edges or nodes.

- :func:`segment_aggr` — AGG ∈ {mean, max, add} over CSR segments, with an optional item mask.
- :class:`PairIndex` — the constant CSR patterns of a pair graph (pair→video, node→pair, gathers).
- :func:`csr_matmul` — ``A @ x`` for a constant pattern ``A`` with optional (learnable) values.
- :class:`PairAttention` — the "Attention Net" of SPEC §3: for a pair p = (u, h), weights the
  videos V(p) against a query and returns the message m_p.
- :class:`PHRConv` — one aggregation layer of SPEC §3 (user side and hashtag side).
- :class:`ReleasedConv` — one round of the release's architecture (SPEC §3.1): GATConv on
  video→user/hashtag edges, then SAGEConv on user↔hashtag edges, both stock PyG layers.

Shape legend (as in design.md): U users, H hashtags, V videos, P user–hashtag pairs,
E pair–video edges (one per training row), E₂ the edges of pairs with at least two videos,
P₂ those pairs, d latent size, nnz the entries of a sparse pattern.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, SAGEConv
from torch_geometric.utils import segment

if TYPE_CHECKING:
    from data_load import PairGraph

AGGRS = ("mean", "max", "add")
MESSAGES = ("both", "video", "hashtag")
PAIR_WEIGHTS = ("pair", "videos")
QUERIES = ("pair", "user", "hashtag")
NEGATIVE_SLOPE = 0.01  # LReLU slope of SPEC §3


def pair_norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    r"""PairNorm (Zhao & Akoglu, ICLR 2020) over the nodes of one type: centre, then rescale to a unit
    mean squared row norm,

    .. math::
        \tilde{\mathbf{x}}_i = \mathbf{x}_i - \frac{1}{N}\sum_j \mathbf{x}_j, \qquad
        \mathbf{x}_i' = \tilde{\mathbf{x}}_i \Big/ \sqrt{\tfrac{1}{N}\textstyle\sum_j \|\tilde{\mathbf{x}}_j\|^2}.

    Mean aggregation followed by LReLU gives every node a large shared positive component, which grows
    layer by layer until all users (and all hashtags) look alike; centring removes it. No parameters.

    Shapes: x [N, d] -> [N, d]
    """
    x = x - x.mean(dim=0, keepdim=True)
    return x / x.pow(2).sum(dim=1).mean().add(eps).sqrt()


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


# ---------------------------------------------------------------------------------------------
# Constant sparse patterns and their products
# ---------------------------------------------------------------------------------------------
class Csr(NamedTuple):
    """A constant sparsity pattern ``A`` [R, C] in CSR form, with its transpose for backward passes.

    Entry ``k`` (in row order) sits at ``(row, col[k])``; the transpose lists the same entries by
    column: its entry ``j`` is entry ``t_perm[j]`` of ``A``, in row ``t_col[j]`` of ``A``. Index
    arrays are int32 when they fit (the sparse kernels read them without a conversion).
    """

    ptr: Tensor  # [R+1]
    col: Tensor  # [nnz]
    t_ptr: Tensor  # [C+1]
    t_col: Tensor  # [nnz]
    t_perm: Tensor  # [nnz] int64
    num_rows: int
    num_cols: int
    gather: bool  # exactly one entry per row: A @ x is x[col]

    @classmethod
    def build(cls, row: Tensor, col: Tensor, num_rows: int, num_cols: int) -> Csr:
        """The pattern with entries ``(row[k], col[k])``; ``row`` must be sorted (non-decreasing)."""
        small = max(num_rows, num_cols, row.numel()) < 2**31
        itype = torch.int32 if small else torch.long
        t_perm = torch.argsort(col, stable=True)  # [nnz] entries by column
        return cls(
            ptr=_counts_to_ptr(torch.bincount(row, minlength=num_rows)).to(itype),
            col=col.to(itype),
            t_ptr=_counts_to_ptr(torch.bincount(col, minlength=num_cols)).to(itype),
            t_col=row[t_perm].to(itype),
            t_perm=t_perm,
            num_rows=num_rows, num_cols=num_cols,
            gather=bool(row.numel() == num_rows and torch.equal(row, torch.arange(num_rows, device=row.device))),
        )

    def keep(self, entries: Tensor, rows: Tensor | None = None) -> Csr:
        """The same pattern with only the entries where ``entries`` [nnz] (row order) is True, and the
        transpose filtered alike (no new sort). The rows stay, emptied, unless ``rows`` [R] bool is given:
        then only those rows are kept, renumbered in order (they must hold every kept entry)."""
        itype = self.ptr.dtype
        before = _counts_to_ptr(entries.long())  # [nnz+1] kept entries before each entry
        t_entries = entries[self.t_perm]  # [nnz] the same flags in column order
        t_col = self.t_col[t_entries].long()  # [nnz'] row of each kept entry, column order
        ptr, num_rows = before[self.ptr.long()], self.num_rows  # [R+1]
        if rows is not None:
            num_rows = int(rows.sum())
            ptr = torch.cat([ptr[:-1][rows], ptr[-1:]])  # [R'+1]
            t_col = (rows.long().cumsum(0) - 1)[t_col]  # new row of each kept entry
        return Csr(ptr=ptr.to(itype), col=self.col[entries],
                   t_ptr=_counts_to_ptr(t_entries.long())[self.t_ptr.long()].to(itype), t_col=t_col.to(itype),
                   t_perm=before[self.t_perm[t_entries]], num_rows=num_rows, num_cols=self.num_cols,
                   gather=self.gather and rows is not None)


def _counts_to_ptr(counts: Tensor) -> Tensor:
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _spmm(ptr: Tensor, col: Tensor, values: Tensor, num_rows: int, x: Tensor) -> Tensor:
    """``A @ x`` for the CSR matrix ``A`` = (ptr, col, values) [R, C], x [C, d] → [R, d].

    Written into a fresh uninitialised output (``beta=0`` ignores its contents): ``torch.sparse.mm``
    would zero-fill a result and copy it once more, twice the kernel's own time on a CPU.
    """
    with warnings.catch_warnings():  # torch warns once that sparse CSR support is in beta
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        matrix = torch.sparse_csr_tensor(ptr, col, values, size=(num_rows, x.size(0)), check_invariants=False)
    out = x.new_empty(num_rows, x.size(1))
    return torch.addmm(out, matrix, x, beta=0.0, out=out)


class _CsrMatmul(torch.autograd.Function):
    """``A @ x`` with ``A`` = (pattern, values); backward: ``Aᵀ @ grad`` and the sampled product."""

    @staticmethod
    def forward(ctx, values: Tensor | None, x: Tensor, pattern: Csr) -> Tensor:
        ctx.pattern = pattern
        ctx.save_for_backward(values, x if values is not None and values.requires_grad else None)  # x: for grad_values
        if pattern.gather and values is None:
            return x.index_select(0, pattern.col)  # [R, d]
        if values is None:
            values = x.new_ones(pattern.col.numel())
        return _spmm(pattern.ptr, pattern.col, values, pattern.num_rows, x)  # [R, d]

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, x = ctx.saved_tensors
        p: Csr = ctx.pattern
        grad = grad.contiguous()
        grad_values = grad_x = None
        if ctx.needs_input_grad[1]:
            t_values = grad.new_ones(p.t_perm.numel()) if values is None else values[p.t_perm]
            grad_x = _spmm(p.t_ptr, p.t_col, t_values, p.num_cols, grad)  # [C, d]
        if ctx.needs_input_grad[0]:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                pattern = torch.sparse_csr_tensor(p.ptr, p.col, grad.new_zeros(p.col.numel()),
                                                  size=(p.num_rows, p.num_cols), check_invariants=False)
            grad_values = torch.sparse.sampled_addmm(pattern, grad, x.t(), beta=0.0).values()  # [nnz]
        return grad_values, grad_x, None


def csr_matmul(pattern: Csr, x: Tensor, values: Tensor | None = None) -> Tensor:
    r"""``out[r] = Σ_k values[k] · x[col[k]]`` over the entries ``k`` of row ``r`` of ``pattern``.

    The backward pass multiplies by the stored transpose (a segment sum over a sorted pattern, where
    autograd of ``x[index]`` would scatter-add) and, when ``values`` needs a gradient, computes
    ``grad_values[k] = ⟨grad[row(k)], x[col(k)]⟩`` as a sampled dense–dense product. It always runs
    in float32 or float64: half-precision inputs (autocast) are promoted to float32.

    Args:
        pattern (Csr): the constant pattern ``A`` [R, C].
        x (Tensor): dense rows, ``C`` of them.
        values (Tensor, optional): the entries of ``A`` in row order (default: all ones).

    Shapes:
        x [C, d], values [nnz] → [R, d]
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if values is not None:
        values = values.to(x.dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _CsrMatmul.apply(values, x.contiguous(), pattern)


class PairIndex(nn.Module):
    r"""Every index the GCN-PHR layers use, derived once from a :class:`data_load.PairGraph`.

    A container of non-persistent buffers (it follows ``.to(device)`` and is not saved). Patterns,
    all :class:`Csr` (rows × columns):

    - ``pair_video`` P × V: the videos V(p) of each pair (the attention's weighted sum);
    - ``user_tag`` U × H and ``user_pair`` U × P: each user's pairs, as hashtags and as pair ids;
    - ``tag_user`` H × U and ``tag_pair`` H × P: each hashtag's pairs, as users and as pair ids;
    - ``edge_user``, ``edge_hashtag``, ``edge_pair`` E₂ × (V + U, V + H, V + P): two entries per edge of a
      pair with at least two videos, its video v and (offset by V) its user, hashtag or pair — the sum
      of a video row and a query row, the attention's hidden layer. Only those edges need a score: a
      pair with one visible video gives it weight 1;
    - ``pair_user``, ``pair_tag`` P × (U, H) and ``tagorder_user``, ``tagorder_pair`` P × (U, P):
      gathers of each pair's user and hashtag, in pair order and in hashtag order (``"max"`` only).

    Also the buffers ``edge_pair`` [E] (pair of each edge), ``multi`` [E₂] (position of each E₂ edge
    among the E), ``multi_ptr`` [P₂+1] and ``multi_seg`` [E₂] (segments of the E₂ edges by pair).

    Args:
        graph (PairGraph): the pair graph; the buffers are built on its device.
    """

    PATTERNS = ("pair_video", "user_tag", "user_pair", "tag_user", "tag_pair", "edge_user", "edge_hashtag",
                "edge_pair", "pair_user", "pair_tag", "tagorder_user", "tagorder_pair")

    def __init__(self, graph: PairGraph) -> None:
        super().__init__()
        num_user, num_tag, num_video, num_pair = (graph.num_user, graph.num_hashtag, graph.num_video,
                                                  graph.num_pairs)
        device = graph.pv_ptr.device
        pairs = torch.arange(num_pair, device=device)  # [P]
        count = graph.pv_ptr[1:] - graph.pv_ptr[:-1]  # [P] videos per pair
        edge_pair = torch.repeat_interleave(pairs, count, output_size=graph.pv_video.numel())  # [E]
        multi = (count[edge_pair] > 1).nonzero().squeeze(1)  # [E₂]
        multi_count = count[count > 1]  # [P₂]
        num_multi = multi.numel()
        edges2 = torch.arange(num_multi, device=device).repeat_interleave(2)  # [2E₂] two entries per edge
        pair2 = edge_pair[multi]  # [E₂]
        video2 = graph.pv_video[multi]  # [E₂]

        def video_and(query: Tensor) -> Tensor:  # [2E₂] columns (v, V + q) of every E₂ edge
            return torch.stack([video2, num_video + query], dim=1).reshape(-1)

        tag_user = graph.pair_user[graph.tag_perm]  # [P] user of each pair, hashtag order
        tag_rows = graph.pair_hashtag[graph.tag_perm]  # [P] hashtag of each pair, hashtag order
        build = {
            "pair_video": (edge_pair, graph.pv_video, num_pair, num_video),
            "user_tag": (graph.pair_user, graph.pair_hashtag, num_user, num_tag),
            "user_pair": (graph.pair_user, pairs, num_user, num_pair),
            "tag_user": (tag_rows, tag_user, num_tag, num_user),
            "tag_pair": (tag_rows, graph.tag_perm, num_tag, num_pair),
            "edge_user": (edges2, video_and(graph.pair_user[pair2]), num_multi, num_video + num_user),
            "edge_hashtag": (edges2, video_and(graph.pair_hashtag[pair2]), num_multi, num_video + num_tag),
            "edge_pair": (edges2, video_and(pair2), num_multi, num_video + num_pair),
            "pair_user": (pairs, graph.pair_user, num_pair, num_user),
            "pair_tag": (pairs, graph.pair_hashtag, num_pair, num_tag),
            "tagorder_user": (pairs, tag_user, num_pair, num_user),
            "tagorder_pair": (pairs, graph.tag_perm, num_pair, num_pair),
        }
        self._shapes = {}
        for name, args in build.items():
            csr = Csr.build(*args)
            self._shapes[name] = (csr.num_rows, csr.num_cols, csr.gather)
            for field in ("ptr", "col", "t_ptr", "t_col", "t_perm"):
                self.register_buffer(f"{name}_{field}", getattr(csr, field), persistent=False)
        self.register_buffer("edge_pair", edge_pair, persistent=False)
        self.register_buffer("multi", multi, persistent=False)
        self.register_buffer("multi_ptr", _counts_to_ptr(multi_count), persistent=False)
        self.register_buffer("multi_seg", torch.repeat_interleave(
            torch.arange(multi_count.numel(), device=device), multi_count, output_size=num_multi),
            persistent=False)

    def csr(self, name: str) -> Csr:
        """The pattern ``name`` (one of :attr:`PATTERNS`), on the buffers' current device."""
        tensors = [getattr(self, f"{name}_{field}") for field in ("ptr", "col", "t_ptr", "t_col", "t_perm")]
        return Csr(*tensors, *self._shapes[name])

    def entries(self, name: str, values: Tensor) -> Tensor:
        """``values`` [nnz] of the entries of pattern ``name`` (all of them here)."""
        return values

    def restrict(self, pairs: Tensor) -> PairIndexView:
        """The same index restricted to the pairs where ``pairs`` [P] bool is True: the attention patterns
        keep only the edges of those pairs, the node patterns only those pairs. A layer computed on it gives
        exact outputs for every node whose pairs are all kept, at the cost of the kept edges only."""
        return PairIndexView(self, pairs)

    def __repr__(self) -> str:
        num_pair, num_video, _ = self._shapes["pair_video"]
        return (f"{self.__class__.__name__}(pairs={num_pair}, videos={num_video}, "
                f"edges={self.edge_pair.numel()}, multi_edges={self.multi.numel()})")


class PairIndexView:
    """:class:`PairIndex` restricted to some pairs (:meth:`PairIndex.restrict`); the same interface.

    Patterns are filtered on first use (:meth:`Csr.keep`: boolean selections and prefix sums over the
    entries, no sort). Outside the kept pairs the attention weights are not computed.
    """

    def __init__(self, index: PairIndex, pairs: Tensor) -> None:
        self.index = index
        self.edge_pair = index.edge_pair  # [E]
        self.pair_keep = pairs  # [P] bool
        self.edge_keep = pairs[index.edge_pair]  # [E] bool
        self.multi_keep = self.edge_keep[index.multi]  # [E₂] bool
        self.multi = index.multi[self.multi_keep]  # [E₂']
        self.multi_ptr = _counts_to_ptr(self.multi_keep.long())[index.multi_ptr]  # [P₂+1], dropped pairs empty
        self.multi_seg = index.multi_seg[self.multi_keep]  # [E₂']
        self._patterns: dict[str, Csr] = {}

    def _keep(self, name: str) -> Tensor | None:
        """[nnz] bool: the entries of pattern ``name`` that belong to kept pairs (None: all of them)."""
        if name.startswith("edge_"):
            return self.multi_keep.repeat_interleave(2)  # [2E₂]
        if name == "pair_video":
            return self.edge_keep  # [E] in pair order
        if name in ("user_tag", "user_pair"):
            return self.pair_keep  # [P] in pair order
        if name in ("tag_user", "tag_pair"):
            return self.pair_keep[self.index.tag_pair_col.long()]  # [P] in hashtag order
        return None  # the gathers of "max" read every pair

    def csr(self, name: str) -> Csr:
        if name not in self._patterns:
            keep, full = self._keep(name), self.index.csr(name)
            rows = self.multi_keep if name.startswith("edge_") else None  # [E₂]: one row per edge
            self._patterns[name] = full if keep is None else full.keep(keep, rows)
        return self._patterns[name]

    def entries(self, name: str, values: Tensor) -> Tensor:
        """The kept ones of ``values`` [nnz], given for every entry of the unrestricted pattern ``name``."""
        keep = self._keep(name)
        return values if keep is None else values[keep]


def _visible_count(ptr: Tensor, edge_mask: Tensor | None) -> Tensor:
    """``[S]`` items per CSR segment ``ptr`` [S+1], counting only those where ``edge_mask`` is True."""
    if edge_mask is None:
        return ptr[1:] - ptr[:-1]
    kept = _compact_ptr(ptr, edge_mask)  # [S+1]
    return kept[1:] - kept[:-1]


def _segment_softmax(score: Tensor, ptr: Tensor, seg: Tensor) -> Tensor:
    """Softmax of ``score`` [N] within CSR segments ``ptr`` [S+1] (``seg`` [N]: segment of each item).

    ``-inf`` scores get weight 0; a segment of only ``-inf`` gets all zeros (no NaN).
    """
    top = torch.segment_reduce(score.detach(), "max", offsets=ptr)  # [S]
    top = torch.where(torch.isfinite(top), top, 0.0)
    weight = (score - top[seg]).exp()  # [N]
    total = torch.segment_reduce(weight, "sum", offsets=ptr)  # [S]
    total = torch.where(total > 0, total, 1.0)
    return weight / total[seg]


# ---------------------------------------------------------------------------------------------
# GCN-PHR layers
# ---------------------------------------------------------------------------------------------
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
    :math:`\mathbf{A}_q \mathbf{q} + \mathbf{A}_z \mathbf{z}`, each projected once per query row and
    once per video and gathered per edge. Scores are computed only for the edges of pairs with at
    least two videos: a softmax over one score is 1 whatever the score. Hidden edges (``edge_mask``
    False) take no part in the softmax and get :math:`\alpha = 0`; a pair whose edges are all hidden
    gets :math:`\mathbf{m}_p = 0`. With ``attention=False`` (ablation, SPEC §3.2) the weights are
    uniform over the visible videos of the pair, :math:`\alpha_{p,v} = 1/|V(p)|`, and the module has
    no parameters.

    Args:
        dim (int): latent size d of queries and videos.
        attention (bool, optional): learned attention (True) or uniform weights (False).
            (default: :obj:`True`)

    Shapes:
        - **input:** query [P, d] (``query_of="pair"``), [U, d] (``"user"``: pair (u, h) uses row u)
          or [H, d] (``"hashtag"``: row h); z [V, d], graph (``PairGraph``), edge_mask [E] bool
          (optional), index (:class:`PairIndex` of ``graph``, optional: built when not given)
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
        self, query: Tensor, z: Tensor, graph: PairGraph, edge_mask: Tensor | None = None,
        query_of: str = "pair", index: PairIndex | PairIndexView | None = None,
    ) -> tuple[Tensor, Tensor]:
        _check_choice("query_of", query_of, QUERIES)
        index = PairIndex(graph) if index is None else index
        dtype = torch.promote_types(z.dtype, torch.float32)  # weights in float32 at least (autocast)
        visible = z.new_ones(index.edge_pair.numel(), dtype=dtype) if edge_mask is None else edge_mask.to(dtype)  # [E]
        if self.attention:
            rows = torch.cat([self.lin_video(z), self.lin_query(query)])  # [V + N, d] A_z z_v, then A_q q + b
            hidden = csr_matmul(index.csr(f"edge_{query_of}"), rows)  # [E₂, d]
            score = self.att(F.leaky_relu(hidden, NEGATIVE_SLOPE, inplace=True)).squeeze(-1).to(dtype)  # [E₂]
            if edge_mask is not None:
                score = score.masked_fill(~edge_mask[index.multi], float("-inf"))
            multi_alpha = _segment_softmax(score, index.multi_ptr, index.multi_seg)  # [E₂]
            alpha = visible.index_put((index.multi,), multi_alpha)  # [E]
        else:
            count = _visible_count(graph.pv_ptr, edge_mask)  # [P]
            alpha = visible / count.clamp(min=1).to(dtype)[index.edge_pair]  # [E]
        message = csr_matmul(index.csr("pair_video"), z, index.entries("pair_video", alpha))  # [P, d]
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
    :math:`\mathrm{LReLU}(\mathbf{W}_s \mathbf{x} + \mathbf{b})`. ``"mean"`` and ``"add"`` are
    products with the node→pair patterns of :class:`PairIndex` (weights 1/count or 1, 0 on inactive
    pairs); ``"max"`` gathers the per-pair rows and takes a segment maximum.

    With ``pair_weight="videos"`` a pair enters ``"mean"`` and ``"add"`` with the weight
    :math:`|\mathcal{V}(p)|`, its number of visible training videos (``"mean"`` divides by their sum):
    the aggregation then runs over the node's training rows rather than its distinct pairs, so a
    hashtag a user gave ten videos weighs ten times one she gave once. The default ``"pair"`` is the
    paper's, one weight per pair.

    Args:
        dim (int): latent size d (input and output).
        aggr (str, optional): AGG, ``"mean"``, ``"max"`` or ``"add"``. (default: :obj:`"mean"`)
        attention (bool, optional): learned attention (True) or uniform weights over V(p)
            (False, ablation of SPEC §3.2). (default: :obj:`True`)
        messages (str, optional): ``"both"``; ``"video"`` drops the :math:`\mathbf{W}_t` terms (no
            hashtag–user messages); ``"hashtag"`` drops the :math:`\mathbf{W}_m` terms and the
            attention modules (no video messages). (default: :obj:`"both"`)
        pair_weight (str, optional): weight of a pair in ``"mean"`` / ``"add"``: ``"pair"`` (one) or
            ``"videos"`` (its number of visible training videos); not for ``"max"``.
            (default: :obj:`"pair"`)

    Shapes:
        - **input:** x_user [U, d], x_tag [H, d], z [V, d], graph (``PairGraph``),
          edge_mask [E] bool (optional), index (:class:`PairIndex` of ``graph``, optional: built
          when not given; pass it to build it once), outputs (users [*], hashtags [*], optional:
          the rows wanted; each side then visits only their pairs, and only their rows are exact,
          the others are not meaningful)
        - **output:** x_user' [U, d], x_tag' [H, d]; with ``return_attention=True`` also
          (alpha_user [E], alpha_tag [E]), both None when ``messages="hashtag"`` (with ``outputs``,
          meaningful on the wanted nodes' pairs only)
    """

    def __init__(
        self, dim: int, aggr: str = "mean", attention: bool = True, messages: str = "both",
        pair_weight: str = "pair",
    ) -> None:
        super().__init__()
        _check_choice("aggr", aggr, AGGRS)
        _check_choice("messages", messages, MESSAGES)
        _check_choice("pair_weight", pair_weight, PAIR_WEIGHTS)
        if aggr == "max" and pair_weight != "pair":
            raise ValueError(f"pair_weight={pair_weight!r} weighs pairs in a mean or a sum, expected aggr 'mean' "
                             "or 'add', got 'max'")
        self.dim = dim
        self.aggr = aggr
        self.pair_weight = pair_weight
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

    def _aggregate(
        self, index: PairIndex | PairIndexView, side: str, other: Tensor, msg: Tensor | None, ptr: Tensor,
        active: Tensor | None, videos: Tensor | None = None,
    ) -> list[Tensor]:
        """AGG of the kept terms of one side (``side`` "user": pairs in pair order, "tag": in hashtag
        order): ``[AGG x_other, AGG m]`` (dropped terms left out), each [N, d]. ``videos`` [P]: each
        pair's visible training videos in this side's order, for ``pair_weight="videos"``."""
        other_name = "tag" if side == "user" else "user"
        if self.aggr == "max":
            gather_other = index.csr("pair_tag" if side == "user" else "tagorder_user")
            rows = [csr_matmul(gather_other, other)] if self.use_neighbours else []  # [P, d]
            if msg is not None:
                rows.append(msg if side == "user" else csr_matmul(index.csr("tagorder_pair"), msg))
            agg = segment_aggr(torch.cat(rows, dim=-1), ptr, "max", mask=active)  # [N, k·d]
            return list(agg.split(self.dim, dim=-1))
        weight = None  # [P] per entry, in this side's pair order
        if self.pair_weight == "videos":  # 0 on inactive pairs, as their count is 0
            weight = videos.to(other.dtype)  # [P]
            if self.aggr == "mean":
                total = torch.segment_reduce(weight, "sum", offsets=ptr).clamp(min=1)  # [N]
                weight = weight / torch.repeat_interleave(total, ptr[1:] - ptr[:-1], output_size=weight.numel())
        elif active is not None or self.aggr == "mean":
            weight = other.new_ones(ptr[-1]) if active is None else active.to(other.dtype)
            if self.aggr == "mean":
                count = _visible_count(ptr, active).clamp(min=1).to(other.dtype)  # [N]
                weight = weight / torch.repeat_interleave(count, ptr[1:] - ptr[:-1], output_size=weight.numel())
        out = []
        for name, rows in ((f"{side}_{other_name}", other if self.use_neighbours else None),
                           (f"{side}_pair", msg)):
            if rows is not None:
                values = None if weight is None else index.entries(name, weight)
                out.append(csr_matmul(index.csr(name), rows, values))  # [N, d]
        return out

    def _update(self, x_self: Tensor, parts: list[Tensor], lin_self: nn.Linear,
                lins: list[nn.Linear | None]) -> Tensor:
        out = lin_self(x_self)  # [N, d]
        for lin, part in zip([lin for lin in lins if lin is not None], parts):
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
        index: PairIndex | None = None,
        outputs: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, tuple[Tensor | None, Tensor | None]]:
        index = PairIndex(graph) if index is None else index
        user_index = tag_index = index
        if outputs is not None:  # each side on the pairs of its wanted nodes only
            wanted_user = torch.zeros(graph.num_user, dtype=torch.bool, device=x_user.device)
            wanted_tag = torch.zeros(graph.num_hashtag, dtype=torch.bool, device=x_tag.device)
            wanted_user[outputs[0]] = True  # [U]
            wanted_tag[outputs[1]] = True  # [H]
            user_index = index.restrict(wanted_user[graph.pair_user])
            tag_index = index.restrict(wanted_tag[graph.pair_hashtag])
        active = videos = None  # [P] bool: pair has at least one visible pair–video edge; [P] how many
        if edge_mask is not None or self.pair_weight == "videos":
            videos = _visible_count(graph.pv_ptr, edge_mask)  # [P]
        if edge_mask is not None:
            active = videos > 0  # [P]

        msg_user = msg_tag = alpha_user = alpha_tag = None
        if self.use_videos:
            msg_user, alpha_user = self.user_att(x_tag, z, graph, edge_mask, query_of="hashtag",
                                                 index=user_index)  # [P, d], [E]
            msg_tag, alpha_tag = self.tag_att(x_user, z, graph, edge_mask, query_of="user",
                                              index=tag_index)  # [P, d], [E]

        # Users: pairs are sorted by (user, hashtag), segments user_ptr [U+1].
        user_parts = self._aggregate(user_index, "user", x_tag, msg_user, graph.user_ptr, active, videos)
        x_user_new = self._update(x_user, user_parts, self.user_self, [self.user_nbr, self.user_msg])  # [U, d]
        # Hashtags: pairs in (hashtag, user) order (tag_perm), segments tag_ptr [H+1].
        tag_active = None if active is None else active[graph.tag_perm]  # [P]
        tag_videos = None if videos is None else videos[graph.tag_perm]  # [P]
        tag_parts = self._aggregate(tag_index, "tag", x_user, msg_tag, graph.tag_ptr, tag_active, tag_videos)
        x_tag_new = self._update(x_tag, tag_parts, self.tag_self, [self.tag_nbr, self.tag_msg])  # [H, d]

        if return_attention:
            return x_user_new, x_tag_new, (alpha_user, alpha_tag)
        return x_user_new, x_tag_new

    def __repr__(self) -> str:
        weight = "" if self.pair_weight == "pair" else f", pair_weight={self.pair_weight!r}"
        return (f"{self.__class__.__name__}({self.dim}, aggr={self.aggr!r}, "
                f"attention={self.attention}, messages={self.messages!r}{weight})")


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
