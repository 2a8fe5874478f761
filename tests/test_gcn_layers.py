"""Tests of gcn_layers.py (SPEC §3, §3.1): each layer against a brute-force Python computation of its
update rule on a tiny hand-built graph, plus softmax, masking and permutation invariances."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from data_load import build_pair_graph
from gcn_layers import PairAttention, PHRConv, ReleasedConv, pair_norm, segment_aggr

U, H, V, D = 3, 4, 6, 5
# (user, video, hashtag) training rows. Pairs: (0,0) videos 0,1,2; (0,1) video 1; (1,0) videos 3,4;
# (1,1) video 4; (1,2) videos 3,5. User 2 and hashtag 3 have no pair.
ROWS = torch.tensor([
    [0, 0, 0], [0, 1, 0], [0, 2, 0], [0, 1, 1],
    [1, 3, 0], [1, 4, 0], [1, 3, 2], [1, 5, 2], [1, 4, 1],
])
# Hides row 1 (one video of pair (0,0)), row 3 (all of pair (0,1)) and rows 6, 7 (all of pair (1,2),
# the only pair of hashtag 2).
HIDDEN_ROWS = [1, 3, 6, 7]


def graph_of(rows):
    return build_pair_graph(rows, num_user=U, num_hashtag=H, num_video=V)


def inputs(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, D, generator=gen, dtype=dtype) for n in (U, H, V))


def make_conv(dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    return PHRConv(D, **kwargs).to(dtype)


def row_mask(hidden):
    mask = torch.ones(len(ROWS), dtype=torch.bool)
    mask[hidden] = False
    return mask


def per_row(graph, edge_values):
    """Edge values [E] (graph.pv_video order) → values per training row [R]."""
    out = torch.zeros(graph.pv_row.numel(), dtype=edge_values.dtype)
    out[graph.pv_row] = edge_values
    return out


# ---------------------------------------------------------------------------------------------
# Brute force: the update rules of SPEC §3 written out with Python loops over the rows.
# ---------------------------------------------------------------------------------------------
def ref_agg(items, reduce):
    stack = torch.stack(items)
    return {"mean": stack.mean(0), "max": stack.max(0).values, "add": stack.sum(0)}[reduce]


def ref_attention(att, query, videos):
    """(m, alpha) of one pair with explicit concatenation A [q ‖ z_v]."""
    if not att.attention:
        alpha = torch.full((len(videos),), 1.0 / len(videos), dtype=query.dtype)
    else:
        a_full = torch.cat([att.lin_query.weight, att.lin_video.weight], dim=1)  # [d, 2d]
        scores = torch.stack([
            att.att.weight[0] @ F.leaky_relu(a_full @ torch.cat([query, z_v]) + att.lin_query.bias,
                                             0.01)
            for z_v in videos
        ])
        alpha = torch.softmax(scores, dim=0)
    return (alpha[:, None] * torch.stack(videos)).sum(0), alpha


def reference(conv, x_user, x_tag, z, rows):
    """PHRConv by brute force over the given (visible) rows; also alpha per row index."""
    videos = {}  # (u, h) -> [(row index, video)]
    for r, (u, v, h) in rows.items():
        videos.setdefault((u, h), []).append((r, v))
    msg_user, msg_tag, alpha_user, alpha_tag = {}, {}, {}, {}
    if conv.use_videos:
        for (u, h), rv in videos.items():
            zs = [z[v] for _, v in rv]
            msg_user[u, h], a_u = ref_attention(conv.user_att, x_tag[h], zs)
            msg_tag[u, h], a_t = ref_attention(conv.tag_att, x_user[u], zs)
            for k, (r, _) in enumerate(rv):
                alpha_user[r], alpha_tag[r] = a_u[k], a_t[k]

    def side(x_self, x_other, lin_self, lin_nbr, lin_msg, msgs, pairs_of):
        out = []
        for n in range(x_self.size(0)):
            total = lin_self(x_self[n])
            pairs = pairs_of(n)
            if conv.pair_weight == "videos":  # a pair once per visible training row
                pairs = [pair for pair in pairs for _ in videos[pair[1]]]
            if pairs and lin_nbr is not None:
                total = total + lin_nbr(ref_agg([x_other[o] for o, _ in pairs], conv.aggr))
            if pairs and lin_msg is not None:
                total = total + lin_msg(ref_agg([msgs[p] for _, p in pairs], conv.aggr))
            out.append(F.leaky_relu(total, 0.01))
        return torch.stack(out)

    x_user_new = side(x_user, x_tag, conv.user_self, conv.user_nbr, conv.user_msg, msg_user,
                      lambda u: [(h, (uu, h)) for uu, h in sorted(videos) if uu == u])
    x_tag_new = side(x_tag, x_user, conv.tag_self, conv.tag_nbr, conv.tag_msg, msg_tag,
                     lambda h: [(u, (u, hh)) for u, hh in sorted(videos) if hh == h])
    return x_user_new, x_tag_new, alpha_user, alpha_tag


def rows_dict(hidden=()):
    return {r: tuple(row.tolist()) for r, row in enumerate(ROWS) if r not in hidden}


# ---------------------------------------------------------------------------------------------
# segment_aggr
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduce", ["mean", "max", "add"])
def test_segment_aggr_matches_brute_force_with_empty_and_masked_segments(reduce):
    x = -1.0 - torch.rand(8, D, dtype=torch.float64)  # all negative: a leaked 0 or -inf would show
    ptr = torch.tensor([0, 3, 3, 5, 8])  # segment 1 is empty
    mask = torch.tensor([True, False, True, False, False, True, True, False])  # segment 2 fully masked
    out = segment_aggr(x, ptr, reduce, mask=mask)
    expected = torch.zeros(4, D, dtype=torch.float64)
    for s in range(4):
        kept = [x[i] for i in range(ptr[s], ptr[s + 1]) if mask[i]]
        if kept:
            expected[s] = ref_agg(kept, reduce)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected)
    unmasked = segment_aggr(x, ptr, reduce)
    assert torch.isfinite(unmasked).all() and (unmasked[1] == 0).all()
    torch.testing.assert_close(unmasked[2], ref_agg([x[3], x[4]], reduce))


def test_segment_aggr_rejects_unknown_reduce():
    with pytest.raises(ValueError, match="reduce"):
        segment_aggr(torch.zeros(2, D), torch.tensor([0, 2]), "min")


# ---------------------------------------------------------------------------------------------
# PairAttention
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", [True, False])
def test_attention_is_a_distribution_per_pair_and_hides_edges(attention):
    graph = graph_of(ROWS)
    torch.manual_seed(0)
    att = PairAttention(D, attention=attention).double()
    query = torch.randn(graph.pair_user.numel(), D, dtype=torch.float64)
    _, _, z = inputs()
    edge_mask = row_mask(HIDDEN_ROWS)[graph.pv_row]  # [E]
    for mask in (None, edge_mask):
        m, alpha = att(query, z, graph, edge_mask=mask)
        visible = torch.ones_like(alpha, dtype=torch.bool) if mask is None else mask
        sums = segment_aggr(alpha[:, None], graph.pv_ptr, "add").squeeze(1)  # [P]
        active = segment_aggr(visible[:, None].double(), graph.pv_ptr, "add").squeeze(1) > 0
        assert (alpha >= 0).all()
        assert (alpha[~visible] == 0).all()
        torch.testing.assert_close(sums[active], torch.ones(int(active.sum()), dtype=torch.float64))
        assert (m[~active] == 0).all()
    assert (~active).sum() == 2  # pairs (0,1) and (1,2) are fully hidden


def test_attention_matches_explicit_concatenation_formula():
    graph = graph_of(ROWS)
    torch.manual_seed(1)
    att = PairAttention(D).double()
    query = torch.randn(graph.pair_user.numel(), D, dtype=torch.float64)
    _, _, z = inputs()
    m, alpha = att(query, z, graph)
    alpha_row = per_row(graph, alpha)
    for p in range(graph.pair_user.numel()):
        edges = range(graph.pv_ptr[p], graph.pv_ptr[p + 1])
        m_ref, a_ref = ref_attention(att, query[p], [z[graph.pv_video[e]] for e in edges])
        torch.testing.assert_close(m[p], m_ref)
        torch.testing.assert_close(alpha_row[graph.pv_row[list(edges)]], a_ref)
    assert alpha.std() > 0.01  # learned scores really vary, unlike the uniform ablation


def test_uniform_attention_has_no_parameters_and_equal_weights():
    graph = graph_of(ROWS)
    att = PairAttention(D, attention=False)
    assert list(att.parameters()) == []
    _, _, z = inputs(torch.float32)
    _, alpha = att(torch.randn(graph.pair_user.numel(), D), z, graph)
    count = (graph.pv_ptr[1:] - graph.pv_ptr[:-1]).float()  # [P]
    expected = (1.0 / count).repeat_interleave(graph.pv_ptr[1:] - graph.pv_ptr[:-1])
    torch.testing.assert_close(alpha, expected)
    conv = PHRConv(D, attention=False)
    _, _, (alpha_user, alpha_tag) = conv(*inputs(torch.float32), graph, return_attention=True)
    torch.testing.assert_close(alpha_user, expected)
    torch.testing.assert_close(alpha_tag, expected)


# ---------------------------------------------------------------------------------------------
# PHRConv
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("messages", ["both", "video", "hashtag"])
@pytest.mark.parametrize("aggr", ["mean", "max", "add"])
def test_phrconv_matches_brute_force(aggr, messages):
    graph = graph_of(ROWS)
    conv = make_conv(aggr=aggr, messages=messages)
    x_user, x_tag, z = inputs()
    out_user, out_tag, (alpha_user, alpha_tag) = conv(x_user, x_tag, z, graph, return_attention=True)
    ref_user, ref_tag, ref_alpha_user, ref_alpha_tag = reference(conv, x_user, x_tag, z, rows_dict())
    torch.testing.assert_close(out_user, ref_user)
    torch.testing.assert_close(out_tag, ref_tag)
    if messages == "hashtag":
        assert alpha_user is None and alpha_tag is None
    else:
        rows = sorted(ref_alpha_user)
        torch.testing.assert_close(per_row(graph, alpha_user)[rows], torch.stack(
            [ref_alpha_user[r] for r in rows]))
        torch.testing.assert_close(per_row(graph, alpha_tag)[rows], torch.stack(
            [ref_alpha_tag[r] for r in rows]))


def test_aggregations_differ():
    graph = graph_of(ROWS)
    x = inputs()
    outs = {aggr: make_conv(aggr=aggr)(*x, graph) for aggr in ("mean", "max", "add")}
    for a, b in (("mean", "max"), ("mean", "add"), ("max", "add")):
        assert not torch.allclose(outs[a][0], outs[b][0])
        assert not torch.allclose(outs[a][1], outs[b][1])


def test_message_options_drop_their_terms():
    names = {m: {n for n, _ in make_conv(messages=m).named_parameters()}
             for m in ("both", "video", "hashtag")}
    assert not any("nbr" in n for n in names["video"])
    assert not any("msg" in n or "att" in n for n in names["hashtag"])
    assert names["video"] < names["both"] and names["hashtag"] < names["both"]

    graph = graph_of(ROWS)
    x_user, x_tag, z = inputs()
    conv = make_conv(messages="hashtag")
    out = conv(x_user, x_tag, z, graph)
    out_other_z = conv(x_user, x_tag, torch.randn_like(z), graph)  # no video messages: z is unused
    torch.testing.assert_close(out, out_other_z)
    conv = make_conv(messages="both")
    assert not torch.allclose(conv(x_user, x_tag, z, graph)[0],
                              conv(x_user, x_tag, torch.randn_like(z), graph)[0])


@pytest.mark.parametrize("aggr", ["mean", "max", "add"])
def test_node_without_pairs_keeps_only_its_self_term(aggr):
    graph = graph_of(ROWS)
    conv = make_conv(aggr=aggr)
    with torch.no_grad():
        conv.user_self.bias.normal_()
        conv.tag_self.bias.normal_()
    x_user, x_tag, z = inputs()
    out_user, out_tag = conv(x_user, x_tag, z, graph)
    torch.testing.assert_close(out_user[2], F.leaky_relu(conv.user_self(x_user[2]), 0.01))
    torch.testing.assert_close(out_tag[3], F.leaky_relu(conv.tag_self(x_tag[3]), 0.01))
    assert not torch.allclose(out_user[0], F.leaky_relu(conv.user_self(x_user[0]), 0.01))


@pytest.mark.parametrize("aggr", ["mean", "max", "add"])
def test_edge_mask_removes_hidden_rows_and_inactive_pairs(aggr):
    graph = graph_of(ROWS)
    conv = make_conv(aggr=aggr)
    x_user, x_tag, z = inputs()
    edge_mask = row_mask(HIDDEN_ROWS)[graph.pv_row]  # [E]
    out_user, out_tag, (alpha_user, _) = conv(x_user, x_tag, z, graph, edge_mask=edge_mask,
                                              return_attention=True)
    ref_user, ref_tag, _, _ = reference(conv, x_user, x_tag, z, rows_dict(HIDDEN_ROWS))
    torch.testing.assert_close(out_user, ref_user)
    torch.testing.assert_close(out_tag, ref_tag)
    # Same as the layer on the graph built from the visible rows only.
    sub_user, sub_tag = conv(x_user, x_tag, z, graph_of(ROWS[row_mask(HIDDEN_ROWS)]))
    torch.testing.assert_close(out_user, sub_user)
    torch.testing.assert_close(out_tag, sub_tag)
    # Hashtag 2 lost its only pair: self term only. Masking changed the other outputs.
    torch.testing.assert_close(out_tag[2], F.leaky_relu(conv.tag_self(x_tag[2]), 0.01))
    assert (per_row(graph, alpha_user)[HIDDEN_ROWS] == 0).all()
    assert not torch.allclose(out_user, conv(x_user, x_tag, z, graph)[0])


@pytest.mark.parametrize("hidden", [(), HIDDEN_ROWS])
@pytest.mark.parametrize("aggr", ["mean", "add"])
def test_pair_weight_videos_aggregates_over_training_rows(aggr, hidden):
    graph = graph_of(ROWS)
    conv = make_conv(aggr=aggr, pair_weight="videos")
    x_user, x_tag, z = inputs()
    edge_mask = row_mask(list(hidden))[graph.pv_row] if hidden else None  # [E]
    out_user, out_tag = conv(x_user, x_tag, z, graph, edge_mask=edge_mask)
    ref_user, ref_tag, _, _ = reference(conv, x_user, x_tag, z, rows_dict(hidden))
    torch.testing.assert_close(out_user, ref_user)
    torch.testing.assert_close(out_tag, ref_tag)
    # The visible pairs of user 1 have 2, 1, 2 videos (2, 1 with the hidden rows), those of hashtag 0
    # 3 and 2 (2 and 2): weighing them by their videos changes those nodes (hashtag 0 with the hidden
    # rows only in a sum), not user 2 and hashtag 3, which have no pairs.
    plain = make_conv(aggr=aggr)
    plain_user, plain_tag = plain(x_user, x_tag, z, graph, edge_mask=edge_mask)
    assert not torch.allclose(out_user[1], plain_user[1])
    assert torch.allclose(out_tag[0], plain_tag[0]) == (aggr == "mean" and bool(hidden))
    torch.testing.assert_close(out_user[2], plain_user[2])
    torch.testing.assert_close(out_tag[3], plain_tag[3])


def test_row_order_does_not_change_outputs():
    graph = graph_of(ROWS)
    conv = make_conv(torch.float32)
    x = inputs(torch.float32)
    out_user, out_tag, (alpha_user, alpha_tag) = conv(*x, graph, return_attention=True)
    perm = torch.randperm(len(ROWS), generator=torch.Generator().manual_seed(3))
    shuffled = graph_of(ROWS[perm])
    s_user, s_tag, (s_alpha_user, s_alpha_tag) = conv(*x, shuffled, return_attention=True)
    torch.testing.assert_close(s_user, out_user, atol=1e-6, rtol=0)
    torch.testing.assert_close(s_tag, out_tag, atol=1e-6, rtol=0)
    for alpha, s_alpha in ((alpha_user, s_alpha_user), (alpha_tag, s_alpha_tag)):
        back = torch.zeros_like(alpha)
        back[perm] = per_row(shuffled, s_alpha)  # shuffled row i is original row perm[i]
        torch.testing.assert_close(back, per_row(graph, alpha), atol=1e-6, rtol=0)


def test_edge_order_within_pairs_does_not_change_outputs():
    graph = graph_of(ROWS)
    num_edges = graph.pv_video.numel()
    pair_of_edge = graph.row_pair[graph.pv_row]  # [E]
    reverse = torch.argsort(pair_of_edge * num_edges + (num_edges - torch.arange(num_edges)))
    reversed_graph = dataclasses.replace(graph, pv_video=graph.pv_video[reverse],
                                         pv_row=graph.pv_row[reverse])
    assert not torch.equal(reversed_graph.pv_video, graph.pv_video)
    conv = make_conv(torch.float32, aggr="max")
    x = inputs(torch.float32)
    out_user, out_tag, (alpha_user, _) = conv(*x, graph, return_attention=True)
    r_user, r_tag, (r_alpha_user, _) = conv(*x, reversed_graph, return_attention=True)
    torch.testing.assert_close(r_user, out_user, atol=1e-6, rtol=0)
    torch.testing.assert_close(r_tag, out_tag, atol=1e-6, rtol=0)
    torch.testing.assert_close(per_row(reversed_graph, r_alpha_user), per_row(graph, alpha_user),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs", [
    {}, {"aggr": "max"}, {"aggr": "add", "messages": "video"}, {"messages": "hashtag"},
    {"attention": False}, {"pair_weight": "videos"},
])
def test_gradients_reach_every_parameter(kwargs):
    graph = graph_of(ROWS)
    conv = make_conv(torch.float32, **kwargs)
    x = [t.requires_grad_() for t in inputs(torch.float32)]
    edge_mask = row_mask([1])[graph.pv_row]
    out_user, out_tag = conv(*x, graph, edge_mask=edge_mask)
    (out_user.pow(2).sum() + out_tag.pow(2).sum()).backward()
    for name, param in conv.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert x[0].grad.abs().sum() > 0 and x[1].grad.abs().sum() > 0
    video_grad = x[2].grad is not None and x[2].grad.abs().sum() > 0
    assert video_grad == (kwargs.get("messages") != "hashtag")


def test_phrconv_rejects_unknown_options_and_has_a_repr():
    with pytest.raises(ValueError, match="aggr"):
        PHRConv(D, aggr="min")
    with pytest.raises(ValueError, match="messages"):
        PHRConv(D, messages="user")
    with pytest.raises(ValueError, match="pair_weight"):
        PHRConv(D, pair_weight="rows")
    with pytest.raises(ValueError, match="expected aggr 'mean' or 'add', got 'max'"):
        PHRConv(D, aggr="max", pair_weight="videos")
    assert repr(PHRConv(D, aggr="max")) == \
        "PHRConv(5, aggr='max', attention=True, messages='both')"
    assert repr(PHRConv(D, pair_weight="videos")) == \
        "PHRConv(5, aggr='mean', attention=True, messages='both', pair_weight='videos')"
    assert repr(PairAttention(D)) == "PairAttention(5, attention=True)"
    assert repr(ReleasedConv(D, aggr="add")) == "ReleasedConv(5, aggr='add', heads=1)"


# ---------------------------------------------------------------------------------------------
# ReleasedConv (SPEC §3.1)
# ---------------------------------------------------------------------------------------------
def released_edges():
    video_user = torch.unique(ROWS[:, [1, 0]], dim=0).t()  # [2, E_vu] video → user
    video_tag = torch.unique(ROWS[:, [1, 2]], dim=0).t()  # [2, E_vh] video → hashtag
    graph = graph_of(ROWS)
    return video_user, video_tag, torch.stack([graph.pair_user, graph.pair_hashtag])


def test_released_conv_shapes_aggr_and_self_loops():
    edges = released_edges()
    x = inputs(torch.float32)
    outs = {}
    for aggr in ("mean", "max", "add"):
        torch.manual_seed(0)
        conv = ReleasedConv(D, aggr=aggr)
        outs[aggr] = conv(*x, *edges)
        assert [t.shape for t in outs[aggr]] == [(U, D), (H, D), (V, D)]
        assert torch.isfinite(torch.cat(outs[aggr])).all()
    for a, b in (("mean", "max"), ("mean", "add"), ("max", "add")):
        assert not torch.allclose(outs[a][0], outs[b][0])
        assert not torch.allclose(outs[a][1], outs[b][1])
        torch.testing.assert_close(outs[a][2], outs[b][2])  # videos have no pair edges
    # User 2 has no edge at all: GAT keeps its self-loop (weight 1), SAGE its root term.
    gat = F.leaky_relu(conv.gat.lin(x[0][2]) + conv.gat.bias, 0.01)
    expected = F.leaky_relu(conv.sage.lin_r(gat) + conv.sage.lin_l.bias, 0.01)
    torch.testing.assert_close(outs["add"][0][2], expected)


def test_released_conv_gradients_reach_every_parameter():
    torch.manual_seed(0)
    conv = ReleasedConv(D, aggr="max", heads=2)
    out_user, out_tag, out_video = conv(*inputs(torch.float32), *released_edges())
    (out_user.pow(2).sum() + out_tag.pow(2).sum() + out_video.pow(2).sum()).backward()
    for name, param in conv.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_pair_norm_centres_rescales_and_ignores_shared_offsets():
    torch.manual_seed(0)
    x = torch.randn(50, D) * 3 + torch.linspace(1, 5, D)             # a large shared component
    out = pair_norm(x)
    torch.testing.assert_close(out.mean(0), torch.zeros(D), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pow(2).sum(1).mean(), torch.tensor(1.0))
    centred = x - x.mean(0)
    torch.testing.assert_close(out, centred / centred.norm(dim=1).pow(2).mean().sqrt())
    torch.testing.assert_close(pair_norm(x + torch.randn(D)), out, atol=1e-5, rtol=1e-4)  # shift-invariant
    torch.testing.assert_close(pair_norm(7 * x), out)                                       # scale-invariant
