"""Tests of baselines.py's paper baselines (SPEC §4): UTM, ConTagNet, CSMN, USHM.

Every learnable gets a gradient and the loss falls under both losses; a few epochs of ``train.run``
rank clearly better than random on ``tiny``; the losses use exactly the scores evaluation uses;
WARP's rank weight and first-violator rule on hand examples; CSMN's TF-IDF context comes from the
training split only, and its fast memory CNN equals a direct convolution of the weighted memory.
"""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from conftest import training_batch as _batch

import train
from baselines import CSMN, ConTagNet, tfidf_context, warp_loss, warp_rank_weight
from model import PAPER_BASELINE_NAMES, Config, bpr_loss

NAMES = PAPER_BASELINE_NAMES
LOSSES = ("native", "bpr")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these models run many small ops, which several threads slow down on a
    busy 2-core machine (train.run sets its own count from --num_workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(tiny, name, loss="native", **kw):
    torch.manual_seed(0)
    cfg = Config(model_name=name, loss=loss, baseline_size="small", dim_latent=16, **kw)
    return train.build_model(cfg, tiny)




def _all_tags(ds, n):
    return torch.arange(ds.num_hashtag).expand(n, -1)                          # [B, H]


def _video_tags(ds, video):
    return set(ds.train[ds.train[:, 1] == video, 2].tolist())


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", NAMES)
def test_every_learnable_is_registered_and_gets_a_gradient(tiny, name, loss):
    model = _model(tiny, name, loss)
    params = dict(model.named_parameters())
    model.loss(*_batch(tiny)).backward()
    no_grad = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert set(model.state_dict()) == set(params)            # features, targets, context are not saved
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for m in model.modules() for p in m.parameters(recurse=False))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_over_a_few_steps(tiny, name, loss):
    model = _model(tiny, name, loss)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    batch = _batch(tiny, n=128)
    losses = []
    for _ in range(15):
        torch.manual_seed(1)                     # the same WARP draws, orders and dropout masks each step
        value = model.loss(*batch)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", NAMES)
def test_a_few_epochs_rank_clearly_better_than_random(tiny, tiny_dir, tmp_path, name, loss):
    cfg = Config(data_path=str(tiny_dir), model_name=name, loss=loss, baseline_size="small", dim_latent=16,
                 weight_decay=0.0, l_r=0.01, num_epoch=4, batch_size=128, num_workers=1)
    results = train.run(cfg, tmp_path / "run", torch.device("cpu"), progress=False, log=lambda *a: None)
    size = tiny.num_neg + tiny.val.pos_ptr.diff().float()                      # [L] candidates per line
    random = (10 / size).clamp(max=1).mean().item()                            # expected Recall@10, ≈ 0.1
    assert results["val"]["recall@10"] > 3 * random


@pytest.mark.parametrize("name", ["utm", "csmn"])
def test_same_seed_same_metrics(tiny_dir, tmp_path, name):
    # WARP draws and CSMN's hashtag orders come from torch's RNG, which train.run seeds from --seed
    cfg = Config(data_path=str(tiny_dir), model_name=name, baseline_size="small", dim_latent=16, num_epoch=1,
                 batch_size=256, l_r=0.01, num_workers=1)
    first, again = (train.run(cfg, tmp_path / run, torch.device("cpu"), progress=False, log=lambda *a: None)
                    for run in ("a", "b"))
    assert first["val"] == again["val"] and first["test"] == again["test"]


@pytest.mark.parametrize("name", NAMES)
def test_bpr_uses_the_evaluation_scores(tiny, name):
    model = _model(tiny, name, "bpr").eval()
    users, videos, pos, neg, rows = _batch(tiny, n=16)
    score = model.scorer()
    with torch.no_grad():
        expected = bpr_loss(score(users, videos, pos[:, None])[:, 0], score(users, videos, neg[:, None])[:, 0])
        torch.testing.assert_close(model.loss(users, videos, pos, neg, rows), expected)
        several = torch.stack([neg, neg.roll(1), neg.roll(2)], dim=1)                    # [B, 3] (--neg_per_row 3)
        s_pos = score(users, videos, pos[:, None])[:, 0]
        by_column = sum(bpr_loss(s_pos, score(users, videos, several[:, k:k + 1])[:, 0]) for k in range(3)) / 3
        torch.testing.assert_close(model.loss(users, videos, pos, several, rows), by_column)


def test_utm_warp_uses_the_evaluation_scores(tiny):
    model = _model(tiny, "utm").eval()
    users, videos, pos, neg, rows = _batch(tiny, n=16)
    H = tiny.num_hashtag
    with torch.no_grad():
        torch.manual_seed(5)
        got = model.loss(users, videos, pos, neg, rows)
        torch.manual_seed(5)
        draws = torch.randint(H, (16, H - 1))                                    # the same draws
        valid = torch.tensor([[h not in _video_tags(tiny, v) for h in row] for v, row in
                              zip(videos.tolist(), draws.tolist())])
        score = model.scorer()
        expected = warp_loss(score(users, videos, pos[:, None])[:, 0], score(users, videos, draws), valid, H).sum()
        torch.testing.assert_close(got, expected)
        torch.manual_seed(6)
        assert model.loss(users, videos, pos, neg, rows) != got                # other draws, other loss


def test_contagnet_bce_uses_the_evaluation_scores_and_counts_each_video_once(tiny):
    model = _model(tiny, "contagnet").eval()                                   # eval: no dropout
    video = int(tiny.train[0, 1])
    rows = torch.nonzero(tiny.train[:, 1] == video).flatten()                  # all k_v rows of one video
    users, videos, pos = tiny.train[rows].unbind(1)
    target = torch.zeros(1, tiny.num_hashtag)
    target[0, sorted(_video_tags(tiny, video))] = 1.0
    with torch.no_grad():
        logits = model.scorer()(users[:1], videos[:1], _all_tags(tiny, 1))
        expected = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        torch.testing.assert_close(model.loss(users, videos, pos, pos, rows), expected)


def test_ushm_softmax_uses_the_evaluation_scores(tiny):
    model = _model(tiny, "ushm")
    users, videos, pos, neg, rows = _batch(tiny, n=16)
    with torch.no_grad():
        logits = model.scorer()(users, videos, _all_tags(tiny, 16))
        torch.testing.assert_close(model.loss(users, videos, pos, neg, rows),
                                   F.cross_entropy(logits, pos, reduction="sum"))


def test_csmn_sequence_loss_uses_the_evaluation_scores(tiny):
    # the first teacher-forced step (causal mask) is the GO-only decoding evaluation runs
    model = _model(tiny, "csmn")
    users, videos, pos, neg, rows = _batch(tiny, n=16)
    with torch.no_grad():
        torch.manual_seed(3)
        got = model.loss(users, videos, pos, neg, rows)
        torch.manual_seed(3)
        inputs, targets, real = model.target_sequences(videos, pos)
        log_p = model.log_probs(users, videos, inputs)                          # [B, T, H+1]
        k = torch.tensor([len(_video_tags(tiny, v)) for v in videos.tolist()]).float()
        nll = -log_p.gather(2, targets.unsqueeze(2)).squeeze(2)                 # [B, T]
        torch.testing.assert_close(got, (nll * real / k.unsqueeze(1)).sum())
        torch.testing.assert_close(model.scorer()(users, videos, _all_tags(tiny, 16)),
                                   log_p[:, 0, : tiny.num_hashtag])


def test_csmn_target_sequences_put_the_positive_first_and_shuffle_the_rest(tiny):
    model = _model(tiny, "csmn")
    users, videos, pos, _, _ = _batch(tiny, n=200)
    torch.manual_seed(0)
    inputs, targets, real = model.target_sequences(videos, pos)
    assert (inputs[:, 0] == model.go).all() and (targets[:, 0] == pos).all()
    for b, v in enumerate(videos.tolist()):
        k = len(_video_tags(tiny, v))
        assert real[b].tolist() == [t <= k for t in range(real.size(1))]
        assert set(targets[b, :k].tolist()) == _video_tags(tiny, v) and targets[b, k] == model.eos
        assert inputs[b, 1: k + 1].tolist() == targets[b, :k].tolist()
    torch.manual_seed(0)
    assert torch.equal(model.target_sequences(videos, pos)[1], targets)        # seeded by torch's RNG
    orders = {tuple(model.target_sequences(videos, pos)[1][real].tolist()) for _ in range(5)}
    assert len(orders) > 1


def test_tfidf_context_by_hand():
    # user 0: videos {0, 1}, {0}, {2}; user 1: {0}; user 2: {3}. idf = ln(4 / (1 + df)) + 1:
    # h0 (df 2) 1.288, h1, h2, h3 (df 1) 1.693; user 0: tf·idf h0 2.575 > h1 = h2 1.693 (tie: smaller id)
    train = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 2, 2], [1, 3, 0], [2, 4, 3]])
    tags, mask = tfidf_context(train, num_user=4, num_hashtag=4, length=2)
    assert tags.tolist() == [[0, 1], [0, 0], [3, 0], [0, 0]]
    assert mask.tolist() == [[True, True], [True, False], [True, False], [False, False]]


def test_csmn_context_comes_from_the_training_split_only(tiny):
    model = _model(tiny, "csmn")
    checked = 0
    for u in range(tiny.num_user):
        own = set(tiny.train[tiny.train[:, 0] == u, 2].tolist())
        memory = model.context[u][model.context_mask[u]].tolist()
        assert len(memory) == len(set(memory)) == min(CSMN.CONTEXT, len(own)) and set(memory) <= own
        for line in torch.nonzero(tiny.test.users == u).flatten().tolist():
            unseen = set(tiny.test.pos[tiny.test.pos_ptr[line]: tiny.test.pos_ptr[line + 1]].tolist()) - own
            checked += len(unseen)
            assert not unseen & set(memory)
    assert checked > 0                                        # tiny has test hashtags new to their user


def test_csmn_memory_cnn_equals_a_direct_convolution(tiny):
    # brute force, one row and step at a time: attention, weighted memory, conv1d, max-pool, output
    model = _model(tiny, "csmn")
    users, videos, pos, _, _ = _batch(tiny, n=4)
    inputs = model.target_sequences(videos, pos)[0]
    relu = torch.relu
    with torch.no_grad():
        fast = model._decode(users, videos, inputs)                             # [B, T, W]
        for b in range(4):
            x = model.features[videos[b]]
            a_v, c_v = relu(model.video_a(x)), relu(model.video_c(x))
            ctx, seen = model.context[users[b]], model.context_mask[users[b]]
            for t in range(inputs.size(1)):
                out = torch.zeros(CSMN.MAX_LEN, dtype=torch.long)
                out[: t + 1] = inputs[b, : t + 1]
                words = torch.cat([ctx, out])                                   # [S_c + S_o]
                a, c = relu(model.word(model.embed_a(words))), relu(model.word(model.embed_c(words)))
                q = relu(model.query(relu(model.word(model.embed_b(inputs[b, t])))))
                valid = torch.cat([torch.tensor([True]), seen, torch.arange(CSMN.MAX_LEN) <= t])
                logit = torch.cat([(q * a_v).sum()[None], a @ q]).masked_fill(~valid, float("-inf"))
                p = torch.softmax(logit, 0)
                weighted = p[1:, None] * c                                      # [S_c + S_o, m]
                h = [relu(F.conv1d(part.T[None], conv.weight, conv.bias)).amax(-1)[0]
                     for part, convs in ((weighted[: CSMN.CONTEXT], model.conv_context),
                                         (weighted[CSMN.CONTEXT:], model.conv_output)) for conv in convs]
                o = relu(model.hidden(relu(model.video_out(p[0] * c_v)) + torch.cat(h)))
                torch.testing.assert_close(fast[b, t], o, rtol=1e-4, atol=1e-5)


def test_warp_rank_weight_by_hand():
    # L(k) = 1 + 1/2 + … + 1/k at k = ⌊(Y − 1) / N⌋, Y = 11 labels
    got = warp_rank_weight(torch.tensor([1, 2, 3, 4, 6, 10]), num_labels=11)
    harmonic = [sum(Fraction(1, i) for i in range(1, k + 1)) for k in (10, 5, 3, 2, 1, 1)]
    torch.testing.assert_close(got, torch.tensor([float(h) for h in harmonic]))


def test_warp_loss_takes_the_first_violator_and_skips_own_hashtags():
    pos = torch.tensor([2.0, 2.0, 0.0])
    neg = torch.tensor([[0.5, 5.0, 1.5, 3.0],      # no; own hashtag (skipped); violates after N = 2 draws
                        [0.0, 0.5, 0.9, 0.2],      # never violates the margin
                        [-0.5, 3.0, 3.0, 3.0]],    # violates at once, N = 1
                       requires_grad=True)
    valid = torch.tensor([[True, False, True, True], [True] * 4, [True] * 4])
    got = warp_loss(pos, neg, valid, num_labels=11)
    torch.testing.assert_close(got, torch.tensor([float(Fraction(137, 60)) * 0.5, 0.0,
                                                  float(Fraction(7381, 2520)) * 0.5]))
    got.sum().backward()
    assert (neg.grad != 0).tolist() == [[False, False, True, False], [False] * 4, [True, False, False, False]]


def test_sizes_and_command_line_switches(tiny):
    contagnet = train.build_model(Config(model_name="contagnet", baseline_size="paper"), tiny)
    assert [m.out_features for m in contagnet.content if isinstance(m, torch.nn.Linear)] == [4096, 4096]
    assert [m.out_features for m in contagnet.context if isinstance(m, torch.nn.Linear)] == [1024, 1024]
    assert contagnet.out.in_features == 5120 and contagnet.out.out_features == tiny.num_hashtag
    assert isinstance(contagnet, ConTagNet)
    csmn = _model(tiny, "csmn")
    paper = CSMN(Config(), tiny.train, tiny.features(), num_user=tiny.num_user, num_hashtag=tiny.num_hashtag)
    for model, (emb, m, ch) in ((paper, (512, 1024, 300)), (csmn, (128, 256, 100))):
        assert (model.embed_a.embedding_dim, model.word.out_features) == (emb, m)
        assert [(c.out_channels, c.kernel_size[0]) for c in model.conv_context] == [(ch, 3), (ch, 4), (ch, 5)]
        assert model.out.out_features == tiny.num_hashtag + 1                 # hashtags + EOS
    assert _model(tiny, "utm").gate_video.out_features == 30
    parser = train.build_parser()
    args = parser.parse_args(["--model_name", "csmn", "--loss", "bpr", "--baseline_size", "small"])
    cfg = train.config_from_args(args)
    assert (cfg.model_name, cfg.loss, cfg.baseline_size) == ("csmn", "bpr", "small")
    for bad in (["--loss", "warp"], ["--baseline_size", "tiny"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
