"""Tests of bench.py, and of the fast paths it measures against their straightforward versions on ``tiny``:
the CSR layers against index gathers + PyG segment softmax (loss and every gradient, last layer restricted
to the batch's nodes), candidate scoring against ``UserScorer.forward``, counted ranks against sorting."""

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.utils import softmax

import bench
import train
from gcn_layers import NEGATIVE_SLOPE, Csr, csr_matmul, segment_aggr
from model import GCNPHR, Config, UserScorer, bpr_loss


# ---------------------------------------------------------------------------------------------
# bench.py end to end
# ---------------------------------------------------------------------------------------------
def test_bench_on_tiny_writes_sane_json(tiny_dir, tiny, tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--data_path", str(tiny_dir), "--steps", "10", "--warmup", "1", "--load_repeats", "1",
                       "--ref_lines", "20", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"command", "dataset", "env", "load", "train", "eval", "memory", "targets"}
    assert report["env"]["threads"] == 1 and report["env"]["torch"] == torch.__version__
    assert report["dataset"]["num_video"] == tiny.num_video
    assert report["dataset"]["feature_bytes"] == tiny.num_video * tiny.feature_dim * 4
    assert report["load"]["seconds"]["median"] > 0 and report["load"]["features_s"] > 0
    assert set(report["train"]) == {"gcn_phr", "released"}
    for t in report["train"].values():
        assert len(t["step_s"]["runs"]) == 10 and len(t["dense_s"]["runs"]) == 10
        assert 0 < t["step_s"]["min"] <= t["step_s"]["median"] <= t["step_s"]["max"]
        assert t["step_over_dense"] == pytest.approx(t["step_s"]["median"] / t["dense_s"]["median"])
        assert t["steps_per_epoch"] == math.ceil(len(tiny.train) / Config.batch_size)
        assert t["epoch_train_s"] >= t["steps_per_epoch"] * t["step_s"]["median"]
    ev = report["eval"]
    assert ev["lines"] == len(tiny.test) and ev["reference_lines"] == 20
    assert ev["total_s"] == pytest.approx(ev["propagate_s"] + ev["rank_s"])
    assert ev["speedup"] == pytest.approx(ev["lines_per_s"] / ev["reference_lines_per_s"])
    assert ev["reference_max_abs_diff"] < 1e-5  # the release's loop ranks the same way
    mem = report["memory"]
    assert mem["train_peak_bytes"] > mem["feature_bytes"] and mem["eval_peak_bytes"] > mem["feature_bytes"]
    assert mem["train_ratio"] == pytest.approx(mem["train_peak_bytes"] / mem["feature_bytes"])
    assert set(report["targets"]) == {"step_over_dense", "gcn_phr_vs_released", "eval_seconds", "eval_speedup",
                                      "train_memory_ratio", "load_seconds"}
    assert all(isinstance(t["met"], bool) for t in report["targets"].values())


def test_bench_times_the_training_flags_it_is_given(tiny_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    flags = "--norm pair --hide_own videos --neg_per_row 0 --dim_latent 8"
    assert bench.main(["--data_path", str(tiny_dir), "--model", "gcn_phr", "--steps", "2", "--warmup", "1",
                       "--load_repeats", "1", "--ref_lines", "5", "--no_memory", "--train_flags", flags,
                       "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["train_flags"] == flags
    assert report["train"]["gcn_phr"]["config"] == {"norm": "pair", "hide_own": "videos", "neg_per_row": 0,
                                                    "dim_latent": 8}
    assert report["train"]["gcn_phr"]["negatives_s"] == 0                 # every hashtag: nothing is drawn
    for bad, says in (("--neg_per_row -1", "--neg_per_row"), ("--bogus 1", "unrecognized arguments")):
        assert bench.main(["--data_path", str(tiny_dir), "--model", "gcn_phr", "--train_flags", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --train_flags") and says in err and "\n" not in err


def test_bench_rejects_unknown_model(tiny_dir, capsys):
    assert bench.main(["--data_path", str(tiny_dir), "--model", "gcn_phr,mf", "--out", ""]) == 2
    assert "--model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The CSR layers against the straightforward ones (index gathers, PyG segment softmax)
# ---------------------------------------------------------------------------------------------
def plain_attention(att, query, z, graph, edge_mask):
    """m [P, d] of one PairAttention: per-edge gathers, PyG's softmax, a segment sum; no CSR patterns."""
    ptr, video = graph.pv_ptr, graph.pv_video  # [P+1], [E]
    if edge_mask is not None:
        ptr = torch.cat([ptr.new_zeros(1), edge_mask.long().cumsum(0)])[ptr]  # [P+1] visible edges
        video = video[edge_mask]
    count = ptr[1:] - ptr[:-1]  # [P]
    pair = torch.repeat_interleave(count)  # [E'] pair of each visible edge
    if att.attention:
        hidden = att.lin_query(query)[pair] + att.lin_video(z)[video]  # [E', d]
        alpha = softmax(att.att(F.leaky_relu(hidden, NEGATIVE_SLOPE)).squeeze(-1), ptr=ptr)  # [E']
    else:
        alpha = count.clamp(min=1).to(z.dtype).reciprocal()[pair]
    return segment_aggr(alpha.unsqueeze(-1) * z[video], ptr, "add")  # [P, d]


def plain_conv(conv, x_user, x_tag, z, graph, edge_mask):
    """PHRConv with [P, d] per-pair rows, masked segment reductions and index gathers."""
    tag_of_pair, user_of_pair = x_tag[graph.pair_hashtag], x_user[graph.pair_user]  # [P, d]
    active = None
    if edge_mask is not None:
        kept = torch.cat([edge_mask.new_zeros(1, dtype=torch.long), edge_mask.long().cumsum(0)])[graph.pv_ptr]
        active = kept[1:] > kept[:-1]  # [P]
    perm = graph.tag_perm

    def side(x_self, nbr, att, query, ptr, order, lin_self, lin_nbr, lin_msg):
        rows = [nbr] if lin_nbr is not None else []
        if lin_msg is not None:
            rows.append(plain_attention(att, query, z, graph, edge_mask))  # [P, d]
        rows = [r[order] for r in rows] if order is not None else rows
        mask = None if active is None else (active if order is None else active[order])
        agg = segment_aggr(torch.cat(rows, dim=-1), ptr, conv.aggr, mask=mask)
        out = lin_self(x_self)
        for lin, part in zip([lin for lin in (lin_nbr, lin_msg) if lin is not None], agg.split(conv.dim, -1)):
            out = out + lin(part)
        return F.leaky_relu(out, NEGATIVE_SLOPE)

    return (side(x_user, tag_of_pair, conv.user_att, tag_of_pair, graph.user_ptr, None, conv.user_self,
                 conv.user_nbr, conv.user_msg),
            side(x_tag, user_of_pair, conv.tag_att, user_of_pair, graph.tag_ptr, perm, conv.tag_self,
                 conv.tag_nbr, conv.tag_msg))


def plain_loss(model, users, videos, pos, neg, rows):
    """The BPR loss of GCNPHR with every layer computed in full by :func:`plain_conv`."""
    graph = model.graph
    edge_mask, hidden_rows = None, model.hidden_rows(videos, rows)
    if hidden_rows is not None:
        hidden = torch.zeros(graph.row_pair.numel(), dtype=torch.bool)
        hidden[hidden_rows] = True
        edge_mask = ~hidden[graph.pv_row]  # [E]
    z = model.video_repr()
    x_user, x_tag = model.user_emb, model.tag_emb
    for conv in model.convs:
        x_user, x_tag = plain_conv(conv, x_user, x_tag, z, graph, edge_mask)
    u, v = x_user[users], z[videos]
    return bpr_loss(model.scoring(u, v, x_tag[pos]), model.scoring(u, v, x_tag[neg]))


CONFIGS = [dict(aggr_mode=a, attention=t, messages=m, hide_own=h)
           for a, t, m, h in itertools.product(("mean", "max", "add"), ("on", "off"), ("both", "video", "hashtag"),
                                               ("none", "rows", "videos"))
           if not (t == "off" and m == "hashtag")]


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: "-".join(kw.values()))
def test_csr_layers_match_the_straightforward_ones(tiny, kw):
    torch.manual_seed(0)
    model = train.build_model(Config(model_name="gcn_phr", dim_latent=8, **kw), tiny).double()
    gen = torch.Generator().manual_seed(1)
    rows = torch.randperm(len(tiny.train), generator=gen)[:64]
    users, videos, pos = tiny.train[rows].unbind(1)
    neg = train.NegativeSampler(tiny.train, tiny.num_hashtag, 0.0, gen).sample()[rows]
    params = list(model.parameters())
    fast = model.loss(users, videos, pos, neg, rows)  # last layer on the batch's nodes only
    plain = plain_loss(model, users, videos, pos, neg, rows)
    torch.testing.assert_close(fast, plain, rtol=1e-10, atol=0)
    for (name, param), a, b in zip(model.named_parameters(), torch.autograd.grad(fast, params, allow_unused=True),
                                   torch.autograd.grad(plain, params, allow_unused=True)):
        a = torch.zeros_like(param) if a is None else a
        b = torch.zeros_like(param) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


def test_full_propagation_matches_the_straightforward_one(tiny):
    torch.manual_seed(0)
    model = train.build_model(Config(model_name="gcn_phr", dim_latent=8), tiny).double()
    reps = model.propagate()
    x_user, x_tag = model.user_emb, model.tag_emb
    for conv in model.convs:
        x_user, x_tag = plain_conv(conv, x_user, x_tag, model.video_repr(), model.graph, None)
    torch.testing.assert_close(reps.user, x_user)
    torch.testing.assert_close(reps.tag, x_tag)


def test_graph_videos_first_rows_give_the_same_model(tiny):
    order = GCNPHR.graph_videos_first(tiny.graph)  # what train.build_model uses
    assert torch.equal(tiny.features(order), tiny.features()[order])
    with pytest.raises(ValueError, match="permutation"):
        tiny.features(order[:-1])
    cfg = Config(model_name="gcn_phr", dim_latent=8)
    torch.manual_seed(0)
    plain = GCNPHR(cfg, tiny.graph, tiny.features()).double()
    torch.manual_seed(0)
    ordered = GCNPHR(cfg, tiny.graph, tiny.features(order), video_order=order).double()
    assert ordered.num_graph_rows == tiny.graph.pv_video.unique().numel() < plain.num_graph_rows
    for a, b in zip(plain.propagate(), ordered.propagate()):
        torch.testing.assert_close(a, b)
    batch = tiny.train[:32].unbind(1)
    neg = torch.randint(0, tiny.num_hashtag, (32,), generator=torch.Generator().manual_seed(0))
    losses = [m.loss(*batch, neg, torch.arange(32)) for m in (plain, ordered)]
    torch.testing.assert_close(losses[0], losses[1])
    for a, b in zip(*(torch.autograd.grad(loss, list(m.parameters())) for loss, m in zip(losses, (plain, ordered)))):
        torch.testing.assert_close(a, b)


def test_csr_matmul_gradients_and_kept_entries():
    gen = torch.Generator().manual_seed(0)
    row = torch.tensor([0, 0, 1, 3, 3, 3])  # row 2 empty
    col = torch.tensor([4, 1, 1, 0, 2, 4])
    pattern = Csr.build(row, col, num_rows=4, num_cols=5)
    values = torch.rand(6, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, x: csr_matmul(pattern, x, v), (values, x))
    dense = torch.zeros(4, 5, dtype=torch.float64).index_put((row, col), values.detach())
    torch.testing.assert_close(csr_matmul(pattern, x.detach(), values.detach()), dense @ x.detach())
    keep = torch.tensor([True, False, True, False, True, True])
    kept = pattern.keep(keep)
    assert torch.autograd.gradcheck(lambda v, x: csr_matmul(kept, x, v), (values[keep].detach().requires_grad_(), x))
    masked = dense * torch.zeros(4, 5, dtype=torch.float64).index_put((row, col), keep.double())  # [4, 5]
    torch.testing.assert_close(csr_matmul(kept, x.detach(), values.detach()[keep]), masked @ x.detach())
    rows = torch.tensor([True, True, False, True])  # row 1 lost its only entry but stays, row 2 goes
    compact = pattern.keep(keep, rows)
    assert compact.num_rows == 3
    torch.testing.assert_close(csr_matmul(compact, x.detach(), values.detach()[keep]), (masked @ x.detach())[rows])
    assert torch.autograd.gradcheck(lambda v, x: csr_matmul(compact, x, v), (values[keep].detach().requires_grad_(), x))


# ---------------------------------------------------------------------------------------------
# Evaluation: chunked candidate scoring, counted ranks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["cat", "fully_con"])
def test_score_candidates_matches_forward(mode):
    torch.manual_seed(0)
    scorer = UserScorer(8, mode, dropout=0.3).eval()
    user, video, tags = torch.randn(13, 8), torch.randn(13, 8), torch.randn(40, 8)
    cand = torch.randint(0, 40, (13, 17))
    tag_part = scorer.tag_part(tags)  # [H, d]
    with torch.no_grad():
        expected = scorer(user, video, tag_part=tag_part[cand])
        for chunk in (1, 4, 13, 100):
            torch.testing.assert_close(scorer.score_candidates(user, video, tag_part, cand, chunk=chunk), expected)


def sorted_metrics(scores, pos, valid, k):
    """Hits and DCG at k of one line by sorting: score descending, then valid negatives, then positives."""
    order = sorted((c for c in range(len(scores)) if valid[c]), key=lambda c: (-scores[c], bool(pos[c]), c))
    hits = [bool(pos[c]) for c in order[:k]]
    return sum(hits), sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h)


def test_counted_ranks_match_sorting_with_ties_padding_and_infinities():
    from evaluation import rank_metrics

    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        lines, cols = 6, int(torch.randint(2, 30, (1,), generator=gen))
        scores = torch.randint(0, 4, (lines, cols), generator=gen).float()  # many ties
        scores[torch.rand(lines, cols, generator=gen) < 0.1] = float("-inf")
        valid = torch.rand(lines, cols, generator=gen) < 0.8
        pos = torch.rand(lines, cols, generator=gen) < 0.3
        valid[:, 0] = pos[:, 0] = True
        scores[~valid] = float("nan")
        got = rank_metrics(scores, pos, valid, ks=(1, 3, 10))
        for b, k in itertools.product(range(lines), (1, 3, 10)):
            hits, dcg = sorted_metrics(scores[b].tolist(), pos[b].tolist(), valid[b].tolist(), k)
            num_pos = int((pos[b] & valid[b]).sum())
            idcg = sum(1 / math.log2(r + 2) for r in range(min(num_pos, k)))
            assert got[f"precision@{k}"][b].item() == pytest.approx(hits / k)
            assert got[f"ndcg@{k}"][b].item() == pytest.approx(dcg / idcg, abs=1e-6)
