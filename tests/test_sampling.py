"""Tests of sampled-subgraph training (``--num_neigh``, sampling.py): exactness when nothing is left out, the
per-node budget, uniform draws without replacement, seeding, resuming, and learning on ``tiny``."""

import itertools
from collections import Counter

import pytest
import torch
from conftest import interrupt_at_epoch, training_batch

import train
from model import Config
from sampling import PairSampler, floyd_sample

CPU = torch.device("cpu")


def _max_degree(graph) -> int:
    return max(int(graph.user_ptr.diff().max()), int(graph.tag_ptr.diff().max()))


@pytest.mark.parametrize("aggr, hide_own, per_row", [("mean", "none", 1), ("max", "videos", 1), ("add", "rows", 1),
                                                      ("mean", "none", 3)])
def test_sampling_every_pair_gives_the_full_graph_loss_and_gradients(tiny, aggr, hide_own, per_row):
    # K at least the largest degree: every destination keeps all its pairs, so the batch's loss and every
    # gradient are those of full-graph propagation (the 'outputs' restriction of the last layer included).
    # In float64: in float32 the two summation orders differ by ~1e-5 on gradients of size ~200 ('add').
    torch.manual_seed(0)
    cfg = dict(dim_latent=16, aggr_mode=aggr, hide_own=hide_own, neg_per_row=per_row)
    full = train.build_model(Config(**cfg), tiny).double()
    sampled = train.build_model(Config(**cfg, num_neigh=_max_degree(tiny.graph)), tiny).double()
    sampled.load_state_dict(full.state_dict())
    batch = training_batch(tiny, n=96)
    if per_row > 1:                                        # [B, K] negatives (--neg_per_row)
        neg = train.NegativeSampler(tiny.train, tiny.num_hashtag, 0.0, torch.Generator().manual_seed(1),
                                    per_row=per_row).sample()
        batch = (*batch[:3], neg[batch[4]], batch[4])
    loss_full, loss_sampled = full.loss(*batch), sampled.loss(*batch)
    loss_full.backward()
    loss_sampled.backward()
    assert loss_full.dtype == torch.float64 and torch.allclose(loss_sampled, loss_full, rtol=1e-10)
    for (name, p), q in zip(full.named_parameters(), sampled.parameters()):
        assert torch.allclose(q.grad, p.grad, rtol=1e-8, atol=1e-10), name


def test_with_few_pairs_the_loss_differs_and_evaluation_uses_the_whole_graph(tiny):
    torch.manual_seed(0)
    full = train.build_model(Config(dim_latent=16), tiny)
    sampled = train.build_model(Config(dim_latent=16, num_neigh=2), tiny)
    sampled.load_state_dict(full.state_dict())
    batch = training_batch(tiny, n=96)
    assert not torch.allclose(sampled.loss(*batch), full.loss(*batch))
    full.eval()
    sampled.eval()                                          # evaluation mode: the whole graph
    assert torch.equal(sampled.loss(*batch), full.loss(*batch))
    users, videos, pos, _, _ = batch
    cand = torch.stack([pos, (pos + 1) % tiny.num_hashtag], dim=1)        # [B, 2]
    with torch.no_grad():
        assert torch.equal(sampled.scorer()(users, videos, cand), full.scorer()(users, videos, cand))


def test_every_node_keeps_at_most_k_of_its_own_pairs(tiny):
    graph, k = tiny.graph, 2
    sampler = PairSampler(graph, num_neigh=k, seed=0)
    users, _, pos, neg, _ = training_batch(tiny, n=64)
    sub = sampler.sample(users, torch.cat([pos, neg]), num_layers=3)
    assert torch.equal(sub.out_user, users.unique()) and torch.equal(sub.out_tag, torch.cat([pos, neg]).unique())
    degree = {"user": graph.user_ptr.diff(), "tag": graph.tag_ptr.diff()}
    later_user, later_tag = sub.out_user, sub.out_tag               # the outputs of the layer above
    for block in reversed(sub.blocks):                              # from the output layer inward
        g = block.graph
        assert torch.equal(block.user_ids[: block.num_dst_user], later_user)
        assert torch.equal(block.tag_ids[: block.num_dst_tag], later_tag)
        pair_user, pair_tag = graph.pair_user[block.pairs], graph.pair_hashtag[block.pairs]   # [P_b] global ends
        assert torch.equal(block.user_ids[g.pair_user], pair_user)   # every block pair is a pair of the graph,
        assert torch.equal(block.tag_ids[g.pair_hashtag], pair_tag)  # between the nodes it joins
        for side, ids, ends, n_dst in (("user", block.user_ids, g.pair_user, block.num_dst_user),
                                       ("tag", block.tag_ids, g.pair_hashtag, block.num_dst_tag)):
            kept = torch.bincount(ends, minlength=ids.numel())[:n_dst]          # [N] pairs of each destination
            assert torch.equal(kept, degree[side][ids[:n_dst]].clamp(max=k))   # min(K, degree), no more
            own = ends < n_dst
            keys = ends[own] * graph.num_pairs + block.pairs[own]
            assert keys.unique().numel() == keys.numel()                        # distinct pairs
        # the layer's inputs are the outputs of the layer below: its destinations and their pairs' other ends
        below_user, below_tag = block.user_ids.unique(), block.tag_ids.unique()
        assert torch.equal(below_user[block.user_from], block.user_ids)
        assert torch.equal(below_tag[block.tag_from], block.tag_ids)
        later_user, later_tag = below_user, below_tag
    assert torch.equal(sub.in_user, later_user) and torch.equal(sub.in_tag, later_tag)
    assert (degree["tag"][sub.blocks[-1].tag_ids[: sub.blocks[-1].num_dst_tag]] > k).any()   # sampling did happen
    edges = torch.cat([sampler._edges(b.pairs) for b in sub.blocks])
    assert torch.equal(sub.video_rows, graph.pv_video[edges].unique())                       # exactly their videos


def test_floyd_sampling_is_uniform_without_replacement():
    gen = torch.Generator().manual_seed(0)
    draws = floyd_sample(torch.full((21000,), 7), 3, gen)                    # [N, 3] from range(7)
    assert ((draws >= 0) & (draws < 7)).all()
    assert (draws.sort(1).values.diff(1) > 0).all()                          # no repeats in a row
    subsets = Counter(map(tuple, draws.sort(1).values.tolist()))
    assert set(subsets) == set(itertools.combinations(range(7), 3))         # all 35, each about 600 times
    assert max(subsets.values()) < 1.25 * 600 and min(subsets.values()) > 0.75 * 600
    sizes = torch.tensor([3, 4, 50, 10**9])                                  # the smallest, and a huge size
    mixed = floyd_sample(sizes, 3, gen)
    assert (mixed < sizes[:, None]).all() and (mixed.sort(1).values.diff(1) > 0).all()


def test_same_seed_same_subgraph_other_seed_differs(tiny):
    users, _, pos, neg, _ = training_batch(tiny, n=64)
    tags = torch.cat([pos, neg])
    kept = [torch.cat([b.pairs for b in PairSampler(tiny.graph, 2, seed).sample(users, tags, 2).blocks])
            for seed in (5, 5, 6)]
    assert torch.equal(kept[0], kept[1]) and not torch.equal(kept[0], kept[2])


def _run(tiny_dir, out, **kw):
    cfg = Config(data_path=str(tiny_dir), dim_latent=16, num_workers=1, **kw)
    return train.run(cfg, out, CPU, progress=False, log=lambda *a: None)


def test_a_few_epochs_of_sampled_training_rank_better_than_random(tiny_dir, tmp_path):
    kw = dict(num_neigh=3, num_epoch=12, l_r=0.01, weight_decay=0.0, batch_size=256, patience=0)
    results = _run(tiny_dir, tmp_path / "a", **kw)
    again = _run(tiny_dir, tmp_path / "b", **kw)
    # a random ranker puts k of ~103 candidates in the top 10: Recall@10 ≈ 0.1
    assert results["val"]["recall@10"] > 0.3 and results["test"]["recall@10"] > 0.3
    assert results["test"] == again["test"] and results["val"] == again["val"]   # same seed, same draws


def test_an_interrupted_sampled_run_resumes_to_the_same_result(tiny_dir, tmp_path, monkeypatch):
    kw = dict(num_neigh=2, num_epoch=5, patience=0, batch_size=256)
    reference = _run(tiny_dir, tmp_path / "ref", **kw)
    interrupt_at_epoch(monkeypatch, 3)
    cfg = Config(data_path=str(tiny_dir), dim_latent=16, num_workers=1, **kw)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, tmp_path / "run", CPU, progress=False, log=lambda *a: None)
    monkeypatch.undo()
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and "neighbours" in ckpt["rng"]           # the sampler's state is saved
    resumed = train.run(cfg, tmp_path / "run", CPU, progress=False, log=lambda *a: None, resume=True)
    assert resumed["test"] == reference["test"] and resumed["val"] == reference["val"]


@pytest.mark.parametrize("kw, message", [
    ({"num_neigh": -1}, "--num_neigh: expected 0"),
    ({"num_neigh": 5, "model_name": "released"}, "--num_neigh 5: samples GCN-PHR's pair graph"),
    ({"num_neigh": 5, "graph": "homogeneous"}, "expected --model_name gcn_phr --graph pairs"),
    ({"num_neigh": 5, "norm": "pair"}, "--norm none"),
])
def test_num_neigh_is_refused_where_it_cannot_apply(kw, message):
    with pytest.raises(ValueError, match=message) as err:
        Config(**kw).validate()
    assert "\n" not in str(err.value)
