"""Tests of model.py and the reference rankers: parameters, gradients, scoring, hidden rows."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import training_batch as _batch

import train
from data_load import build_pair_graph
from model import GCNPHR, Config, ReleasedGCN, UserScorer, bpr_loss, softmax_loss

TRAINABLE = ("gcn_phr", "released", "content", "mf")


def _cfg(**kw):
    return Config(dim_latent=16, **kw)




@pytest.mark.parametrize("name", TRAINABLE)
def test_every_learnable_is_registered_and_gets_a_gradient(tiny, name):
    torch.manual_seed(0)
    model = train.build_model(_cfg(model_name=name), tiny)
    params = dict(model.named_parameters())
    if name in ("gcn_phr", "released"):
        assert "user_emb" in params and "tag_emb" in params       # the release never trained these
    model.loss(*_batch(tiny)).backward()
    no_grad = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    state = model.state_dict()
    assert set(state) == set(params)                              # features and graph are not saved
    assert all(not n.startswith("g_") for n in state)


def test_default_config_builds_every_layer():
    # a model built from the default config has L layers and the scoring MLP of 'cat'
    cfg = Config()
    graph = build_pair_graph(torch.tensor([[0, 0, 0], [0, 1, 1], [1, 1, 0]]), 2, 2, 3)
    model = GCNPHR(cfg, graph, torch.rand(3, 5))
    assert len(model.convs) == cfg.num_layers == 2
    assert model.scoring.v2 is not None and model.user_emb.shape == (2, 64)
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for m in model.modules() for p in m.parameters(recurse=False))


@pytest.mark.parametrize("name", TRAINABLE)
def test_loss_falls_over_a_few_steps(tiny, name):
    torch.manual_seed(0)
    model = train.build_model(_cfg(model_name=name, weight_decay=0.0), tiny)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    batch = _batch(tiny, n=256)
    losses = []
    for _ in range(25):
        loss = model.loss(*batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("mode", ["cat", "fully_con"])
def test_evaluation_scores_equal_training_scores(mode):
    # one scoring function: the split first layer used for candidates equals the concatenated one
    torch.manual_seed(0)
    scorer = UserScorer(8, mode)
    u, v, h = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 3, 8)
    per_candidate = torch.stack([scorer(u, v, h[:, c]) for c in range(3)], dim=1)   # [5, 3]
    h_bar_input = torch.cat([h, u.unsqueeze(1).expand(-1, 3, -1)], dim=-1)           # [5, 3, 16]
    first = torch.nn.functional.leaky_relu(scorer.h1(h_bar_input), 0.01)
    h_bar = first if mode == "fully_con" else torch.nn.functional.leaky_relu(scorer.h2(first), 0.01)
    v_in = torch.nn.functional.leaky_relu(scorer.v1(torch.cat([v, u], -1)), 0.01)
    v_bar = v_in if mode == "fully_con" else torch.nn.functional.leaky_relu(scorer.v2(v_in), 0.01)
    brute = (v_bar.unsqueeze(1) * h_bar).sum(-1)
    torch.testing.assert_close(scorer(u, v, h), per_candidate)
    torch.testing.assert_close(scorer(u, v, h), brute)
    assert (mode == "cat") == (scorer.v2 is not None)


@pytest.mark.parametrize("graph", ["pairs", "homogeneous"])
def test_scorer_matches_loss_path(tiny, graph):
    # evaluation's scorer gives the training path's scores, for GCN-PHR and its homogeneous-graph ablation
    torch.manual_seed(0)
    model = train.build_model(_cfg(graph=graph), tiny).eval()
    users, videos, pos, _, _ = _batch(tiny, n=8)
    with torch.no_grad():
        reps = model.propagate()
        direct = model.scoring(reps.user[users], reps.video[videos], reps.tag[pos])
        via_eval = model.scorer()(users, videos, pos.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(direct, via_eval)


@pytest.mark.parametrize("name,pop_share,user_share,graph,loss", [
    ("gcn_phr", 0.0, 0.0, "pairs", "native"), ("gcn_phr", 0.5, 0.0, "pairs", "native"),
    ("released", 0.0, 0.0, "pairs", "native"), ("gcn_phr", 0.0, 0.0, "homogeneous", "native"),
    ("gcn_phr", 0.0, 0.3, "pairs", "native"), ("gcn_phr", 0.5, 0.3, "pairs", "native"),
    ("released", 0.0, 1.0, "pairs", "native"), ("gcn_phr", 0.0, 0.0, "pairs", "softmax"),
    ("released", 0.0, 0.0, "pairs", "softmax")])
def test_every_hashtag_loss_equals_a_row_by_row_computation(tiny, name, pop_share, user_share, graph, loss):
    # --neg_per_row 0: each row's BPR term averaged over every hashtag not on its video, weighted by the
    # sampler's distribution (with --neg_user_share s: a share s uniform over the user's own hashtags not on
    # the video, or none when she has none left); computed here row by row and hashtag by hashtag with the
    # model's scoring; with a user share over every training row, one user keeping a single video so that her
    # rows have no own hashtag left. With --loss softmax: the row's cross-entropy of its positive against
    # itself and every training hashtag not on the video
    torch.manual_seed(0)
    ds = tiny
    if user_share:
        ds = copy.copy(tiny)                                            # tiny is shared: only the copy changes
        user, video = tiny.train[0, :2].tolist()
        mine = tiny.train[:, 0] == user
        assert (tiny.train[mine, 1] != video).any()                     # she had several videos
        ds.train = tiny.train[~mine | (tiny.train[:, 1] == video)]
        ds.graph = build_pair_graph(ds.train, ds.num_user, ds.num_hashtag, ds.num_video)
    model = train.build_model(_cfg(model_name=name, neg_per_row=0, neg_pop_share=pop_share,
                                   neg_user_share=user_share, graph=graph, loss=loss), ds).eval()
    users, videos, pos, _, rows = _batch(ds, n=len(ds.train) if user_share else 12)
    count = torch.bincount(ds.train[:, 2], minlength=ds.num_hashtag).double()
    q = (1 - pop_share) * (count > 0).double() / (count > 0).sum() + pop_share * count / count.sum()   # [H]
    H = ds.num_hashtag
    fallbacks = 0
    with torch.no_grad():
        reps = model.propagate()
        expected = 0.0
        for u, v, h in zip(users.tolist(), videos.tolist(), pos.tolist()):
            on_video = set(ds.train[ds.train[:, 1] == v, 2].tolist())
            negs = [g for g in range(H) if g not in on_video]
            own = sorted(set(ds.train[ds.train[:, 0] == u, 2].tolist()) - on_video)
            s = model.scoring(reps.user[u].expand(H, -1), reps.video[v].expand(H, -1), reps.tag).double()  # [H]
            if loss == "softmax":
                kept = [g for g in negs if q[g] > 0] + [h]
                expected += torch.logsumexp(s[kept], 0) - s[h]
                continue
            terms = -F.logsigmoid(s[h] - s)                                                     # [H]
            share = user_share if own else 0.0
            fallbacks += not own
            expected += (1 - share) * (terms[negs] * q[negs]).sum() / q[negs].sum()
            if own:
                expected += share * terms[own].mean()
        got = model.loss(users, videos, pos, torch.empty(len(users), 0, dtype=torch.long), rows)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    if user_share:
        assert 0 < fallbacks < len(users)                      # both kinds of rows were checked


@pytest.mark.parametrize("users_per_group,user_share,loss", [(1, 0.0, "native"), (3, 0.0, "native"),
                                                            (3, 0.3, "native"), (3, 0.0, "softmax")])
def test_every_hashtag_loss_in_checkpointed_groups_equals_the_whole_batch(tiny, users_per_group, user_share, loss):
    # past ALL_TAGS_MAX_ELEMENTS the batch's users are taken in checkpointed groups: same loss, same gradients
    torch.manual_seed(0)
    model = train.build_model(_cfg(neg_per_row=0, hide_own="videos", norm="pair", neg_user_share=user_share,
                                   loss=loss), tiny)
    users, videos, pos, _, rows = _batch(tiny, n=40)
    assert users.unique().numel() > 2 * users_per_group                 # several groups

    def loss_and_grads(max_elements):
        model.zero_grad(set_to_none=True)
        kept = []                      # what autograd keeps for the backward (not what a checkpoint recomputes)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.numel()) or t, lambda t: t):
            loss = model.loss_all(users, videos, pos, rows, max_elements=max_elements)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, sum(kept)

    whole, whole_grads, whole_kept = loss_and_grads(2 ** 40)
    grouped, grouped_grads, grouped_kept = loss_and_grads(users_per_group * tiny.num_hashtag * 16)
    torch.testing.assert_close(grouped, whole)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(grouped_grads[name], grad, msg=name)
    assert whole_kept - grouped_kept >= users.unique().numel() * tiny.num_hashtag * 16   # a [G, H, d] less


def test_every_hashtag_loss_trains_and_is_refused_where_it_does_not_apply(tiny, tmp_path):
    cfg = _cfg(neg_per_row=0, num_epoch=3, batch_size=64, l_r=0.01, num_workers=1, weight_decay=0.0)
    result = train.run(cfg, tmp_path / "run", torch.device("cpu"), progress=False, log=lambda *a: None)
    losses = [float(line.split(",")[1]) for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert result["test"]["recall@10"] > 0
    for bad in ({"model_name": "mf"}, {"num_neigh": 4}):
        with pytest.raises(ValueError, match="neg_per_row 0"):
            Config(neg_per_row=0, **bad).validate()
    Config(neg_per_row=0, neg_user_share=0.1).validate()                 # the share enters the expectation
    Config(neg_per_row=0, loss="softmax").validate()
    with pytest.raises(ValueError, match="neg_per_row"):
        Config(neg_per_row=-1).validate()


@pytest.mark.parametrize("pair_weight", ["pair", "videos"])
def test_hidden_rows_equal_a_graph_without_them(tiny, pair_weight):
    # hiding a batch's rows during propagation = propagating a graph built without those rows
    # (with --pair_weight videos, each pair then weighs its visible videos)
    torch.manual_seed(0)
    cfg = _cfg(hide_own="rows", pair_weight=pair_weight)
    full = GCNPHR(cfg, tiny.graph, tiny.features())
    rows = torch.arange(0, len(tiny.train), 7)
    keep = torch.ones(len(tiny.train), dtype=torch.bool)
    keep[rows] = False
    reduced = GCNPHR(cfg, build_pair_graph(tiny.train[keep], tiny.num_user, tiny.num_hashtag, tiny.num_video),
                     tiny.features())
    reduced.load_state_dict(full.state_dict())
    with torch.no_grad():
        hidden, rebuilt, shown = full.propagate(rows), reduced.propagate(), full.propagate()
    torch.testing.assert_close(hidden.user, rebuilt.user)
    torch.testing.assert_close(hidden.tag, rebuilt.tag)
    assert not torch.allclose(hidden.user, shown.user)
    other = GCNPHR(dataclasses.replace(cfg, pair_weight="videos" if pair_weight == "pair" else "pair"),
                   tiny.graph, tiny.features())
    other.load_state_dict(full.state_dict())
    with torch.no_grad():
        assert not torch.allclose(other.propagate(rows).user, hidden.user)


def test_pair_norm_training_rows_equal_full_propagation(tiny):
    # with --norm pair the batch path cannot restrict the last layer: its rows equal the full propagation
    torch.manual_seed(0)
    model = GCNPHR(_cfg(norm="pair"), tiny.graph, tiny.features())
    plain = GCNPHR(_cfg(), tiny.graph, tiny.features())
    plain.load_state_dict(model.state_dict())
    users, _, pos, neg, _ = _batch(tiny, n=16)
    with torch.no_grad():
        full, batch = model.propagate(), model.batch_reps(users, torch.cat([pos, neg]), None)
        unnormed = plain.propagate()
    torch.testing.assert_close(batch.user[users], full.user[users])
    torch.testing.assert_close(batch.tag[pos], full.tag[pos])
    torch.testing.assert_close(full.user.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    assert unnormed.user.mean(0).abs().max() > 1e-3                 # LReLU outputs share a component
    assert not torch.allclose(full.user, unnormed.user)


def test_aggr_and_scoring_modes_change_the_model(tiny):
    outs = {}
    for aggr in ("mean", "max", "add"):
        torch.manual_seed(0)
        model = GCNPHR(_cfg(aggr_mode=aggr), tiny.graph, tiny.features())
        with torch.no_grad():
            outs[aggr] = model.propagate().user
    assert not torch.allclose(outs["mean"], outs["max"])
    assert not torch.allclose(outs["mean"], outs["add"])
    cat = GCNPHR(_cfg(scoring_mode="cat"), tiny.graph, tiny.features())
    fc = GCNPHR(_cfg(scoring_mode="fully_con"), tiny.graph, tiny.features())
    assert sum(p.numel() for p in cat.parameters()) > sum(p.numel() for p in fc.parameters())


def test_released_variant_uses_num_layers_and_heads(tiny):
    model = ReleasedGCN(_cfg(num_layers=3, num_heads=2), tiny.graph, tiny.features())
    assert len(model.convs) == 3 and model.convs[0].heads == 2
    edges = model.video_user
    assert edges.shape[0] == 2 and edges.unique(dim=1).shape == edges.shape


def test_userpop_counts_the_users_own_hashtags(tiny):
    model = train.build_model(Config(model_name="userpop"), tiny)
    score = model.scorer()
    u = int(tiny.train[0, 0])
    own = tiny.train[tiny.train[:, 0] == u]
    tags, counts = own[:, 2].unique(return_counts=True)
    got = score(torch.tensor([u]), torch.tensor([0]), tags.unsqueeze(0))[0]
    torch.testing.assert_close(got.floor(), counts.float())
    unused = torch.tensor([[h for h in range(tiny.num_hashtag) if h not in set(tags.tolist())][:5]])
    assert (score(torch.tensor([u]), torch.tensor([0]), unused) < 1).all()


def _knn_by_hand(ds, user, video, tau, alpha, beta):
    """The neighbour-voting score of every hashtag for one line, by plain loops (float64)."""
    f = F.normalize(ds.features().double(), dim=1)
    rows = ds.train.tolist()
    tags_of, owner = {}, {}
    for u, v, h in rows:
        tags_of.setdefault(v, set()).add(h)
        owner[v] = u

    def votes(videos):
        if not videos:
            return torch.zeros(ds.num_hashtag, dtype=torch.float64)
        w = torch.softmax(torch.tensor([float(f[video] @ f[v]) / tau for v in videos], dtype=torch.float64), 0)
        out = torch.zeros(ds.num_hashtag, dtype=torch.float64)
        for weight, v in zip(w, videos):
            for h in tags_of[v]:
                out[h] += weight
        return out
    everyone = sorted(tags_of)
    score = votes([v for v in everyone if owner[v] == user]) + beta * votes(everyone)
    mine = [h for u, v, h in rows if u == user]
    for h in set(mine):
        score[h] += alpha * mine.count(h) / len(mine)
    pop = torch.bincount(ds.train[:, 2], minlength=ds.num_hashtag).double()
    return score + 1e-6 * pop / (pop.max() + 1)


@pytest.mark.parametrize("tau, alpha, beta", [(0.05, 1.0, 0.3), (0.5, 0.0, 0.0), (0.1, 0.3, 2.0)])
def test_knn_equals_neighbour_voting_by_hand(tiny, tau, alpha, beta):
    cfg = Config(model_name="knn", knn_temperature=tau, knn_user_weight=alpha, knn_global_weight=beta)
    model = train.build_model(cfg, tiny)
    assert not model.trainable and list(model.parameters()) == []
    users, videos = tiny.test.users[:3], tiny.test.videos[:3]
    unseen = torch.tensor([tiny.num_user])                   # recommend.py's stand-in for an unseen user
    every = torch.arange(tiny.num_hashtag)
    got = model.all_scorer()(torch.cat([users, unseen]), torch.cat([videos, videos[:1]]))    # [4, H]
    for row, (u, v) in enumerate(zip([*users.tolist(), tiny.num_user], [*videos.tolist(), int(videos[0])])):
        torch.testing.assert_close(got[row].double(), _knn_by_hand(tiny, u, v, tau, alpha, beta), rtol=1e-5, atol=1e-7)
    cand = every[torch.randperm(tiny.num_hashtag, generator=torch.Generator().manual_seed(0))][:40].expand(3, -1)
    torch.testing.assert_close(model.scorer()(users, videos, cand), got[:3].gather(1, cand))


def test_knn_votes_for_the_tags_of_the_nearest_own_video(tiny):
    # a line whose video is one of the user's training videos, at a low temperature and with votes from her
    # own videos only: that video's hashtags, and only those, score 1 (its cosine with itself is the largest)
    model = train.build_model(Config(model_name="knn", knn_temperature=1e-3, knn_user_weight=0.0,
                                     knn_global_weight=0.0), tiny)
    user, video = (int(x) for x in tiny.train[0, :2])
    tags = tiny.train[tiny.train[:, 1] == video, 2]
    score = model.all_scorer()(torch.tensor([user]), torch.tensor([video]))[0]
    assert (score[tags] > 0.99).all()
    others = torch.ones(tiny.num_hashtag, dtype=torch.bool)
    others[tags] = False
    assert (score[others] < 0.01).all()


def test_config_rejects_bad_values():
    for bad in ({"aggr_mode": "median"}, {"topk": "5,x"}, {"topk": "5"}, {"l_r": 0.0}, {"dropout": 1.0},
                {"model_name": "released", "hide_own": "videos"}, {"neg_pop_share": 1.5},
                {"model_name": "released", "norm": "pair"}, {"graph": "homogeneous", "norm": "pair"},
                {"norm": "batch"}, {"model_name": "knn", "knn_temperature": 0.0}, {"knn_global_weight": -1.0},
                {"pair_weight": "videos", "aggr_mode": "max"}, {"pair_weight": "videos", "model_name": "mf"},
                {"pair_weight": "videos", "num_neigh": 3}, {"pair_weight": "videos", "graph": "homogeneous"},
                {"pair_weight": "rows"}):
        with pytest.raises(ValueError):
            dataclasses.replace(Config(), **bad).validate()


def test_softmax_loss_is_the_cross_entropy_of_the_positive_and_bpr_with_one_negative(tiny):
    # --loss softmax: -ln softmax of the positive among itself and the row's negatives, summed over the rows;
    # with a single negative that is -ln sigmoid(s+ - s-), the paper's BPR
    torch.manual_seed(0)
    pos, neg = torch.randn(6), torch.randn(6, 5)
    by_class = F.cross_entropy(torch.cat([pos[:, None], neg], 1), torch.zeros(6, dtype=torch.long), reduction="sum")
    torch.testing.assert_close(softmax_loss(pos, neg), by_class)
    torch.testing.assert_close(softmax_loss(pos, neg[:, 0]), bpr_loss(pos, neg[:, 0]))
    torch.testing.assert_close(softmax_loss(pos, neg[:, :1]), bpr_loss(pos, neg[:, :1]))
    assert not torch.allclose(softmax_loss(pos, neg), bpr_loss(pos, neg) * neg.size(1))
    # the model's sampled-negative loss (and the sampled-subgraph one, which keeps the whole graph here) uses it
    users, videos, pos_tags, _, rows = _batch(tiny, n=10)
    neg_tags = torch.randint(tiny.num_hashtag, (10, 4))
    for extra in ({}, {"num_neigh": 1000}):
        model = train.build_model(_cfg(neg_per_row=4, loss="softmax", **extra), tiny).eval()
        with torch.no_grad():
            reps = model.propagate()
            u, v = reps.user[users], reps.video[videos]
            expected = softmax_loss(model.scoring(u, v, reps.tag[pos_tags]), model.scoring(u, v, reps.tag[neg_tags]))
            model.train()
            got = model.loss(users, videos, pos_tags, neg_tags, rows)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [{"model_name": "mf"}, {"model_name": "contagnet"}, {"neg_pop_share": 0.1},
                                 {"neg_user_share": 0.1}])
def test_softmax_loss_is_refused_where_it_does_not_apply(bad):
    with pytest.raises(ValueError, match="--loss softmax"):
        Config(loss="softmax", **bad).validate()
