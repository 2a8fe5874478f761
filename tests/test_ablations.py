"""Tests of GCN-PHR's ablation switches (SPEC §3.2) and the homogeneous-graph model (model.py).

Each switch reaches the layers and trains; a few epochs of every ablation rank clearly better than random
on ``tiny``; the homogeneous graph holds exactly the user–video, hashtag–video and user–hashtag edges of
the training rows (global ids), every parameter gets a gradient, and hidden rows remove only the edges no
visible row supports; the switches are refused for other models.
"""

import pytest
import torch
from conftest import training_batch as _batch

import train
from model import GCNPHR, Config, HomogeneousGCN

ABLATIONS = [
    {"attention": "off"},
    {"messages": "video"},
    {"messages": "hashtag"},
    {"graph": "homogeneous"},
    {"aggr_mode": "max"},
    {"aggr_mode": "add"},
    {"scoring_mode": "fully_con"},
    {"num_layers": 1},
    {"num_layers": 3},
]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: small graphs on a busy 2-core machine run faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)




def _homogeneous(tiny, **kw):
    torch.manual_seed(0)
    return train.build_model(Config(graph="homogeneous", dim_latent=16, **kw), tiny)


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
def test_a_few_epochs_rank_clearly_better_than_random(tiny, tiny_dir, tmp_path, ablation):
    cfg = Config(data_path=str(tiny_dir), dim_latent=16, weight_decay=0.0, l_r=0.01, num_epoch=4, batch_size=128,
                 num_workers=1, **ablation)
    results = train.run(cfg, tmp_path / "run", torch.device("cpu"), progress=False, log=lambda *a: None)
    size = tiny.num_neg + tiny.val.pos_ptr.diff().float()                      # [L] candidates per line
    random = (10 / size).clamp(max=1).mean().item()                            # expected Recall@10, ≈ 0.1
    assert results["val"]["recall@10"] > 3 * random
    assert (tmp_path / "run" / "test_per_line.npz").is_file()


def test_switches_reach_the_layers(tiny):
    model = train.build_model(Config(dim_latent=16, attention="off", messages="video"), tiny)
    assert isinstance(model, GCNPHR)
    assert all(not conv.attention and conv.messages == "video" for conv in model.convs)
    assert not any("att" in name for name, _ in model.named_parameters())      # uniform weights learn nothing
    model = train.build_model(Config(dim_latent=16, messages="hashtag"), tiny)
    assert not any("msg" in name or "att" in name for name, _ in model.named_parameters())
    assert isinstance(_homogeneous(tiny), HomogeneousGCN)


def test_homogeneous_graph_has_exactly_the_training_edges(tiny):
    model = _homogeneous(tiny)
    u_off, h_off = 0, tiny.num_user
    v_off = tiny.num_user + tiny.num_hashtag
    expected = set()
    for user, video, tag in tiny.train.tolist():                               # local ids → global ids
        expected |= {(user + u_off, video + v_off), (tag + h_off, video + v_off), (user + u_off, tag + h_off)}
    edges = model.edge_index()                                                  # [2, 2 N_e]
    assert set(map(tuple, model.edge_ends.T.tolist())) == expected
    assert set(map(tuple, edges.T.tolist())) == expected | {(b, a) for a, b in expected}
    assert edges.size(1) == 2 * len(expected)
    assert model.edge_support.sum().item() == 3 * len(tiny.train)              # every row backs three edges


def test_homogeneous_hidden_rows_drop_only_unsupported_edges(tiny):
    model = _homogeneous(tiny)
    pair_rows = {}                                                              # (user, tag) -> rows
    for row, (user, _, tag) in enumerate(tiny.train.tolist()):
        pair_rows.setdefault((user, tag), []).append(row)
    shared = next(rows for rows in pair_rows.values() if len(rows) > 1)
    user, _, tag = tiny.train[shared[0]].tolist()
    pair_edge = (user, tiny.num_user + tag)

    def kept(hidden):
        return set(map(tuple, model.edge_index(torch.tensor(hidden)).T.tolist()))

    assert pair_edge in kept(shared[:1])                                        # another row still backs it
    assert pair_edge not in kept(shared)
    assert kept(list(range(len(tiny.train)))) == set()                          # all hidden: self-loops only


def test_homogeneous_every_parameter_gets_a_gradient(tiny):
    model = _homogeneous(tiny)
    params = dict(model.named_parameters())
    assert any(name.startswith("convs.") for name in params)
    model.loss(*_batch(tiny)).backward()
    no_grad = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert set(model.state_dict()) == set(params)                              # graph and features are not saved
    assert len(model.convs) == 2


@pytest.mark.parametrize("args, message", [
    (["--model_name", "utm", "--attention", "off"], "--attention off: an ablation of GCN-PHR"),
    (["--model_name", "released", "--graph", "homogeneous"], "expected --model_name gcn_phr"),
    (["--graph", "homogeneous", "--messages", "video"], "plain GCN"),
])
def test_switches_are_refused_where_they_do_not_apply(args, message):
    parsed = train.build_parser().parse_args(args)
    with pytest.raises(ValueError, match=message):
        train.config_from_args(parsed)


def test_switches_are_on_the_command_line():
    parsed = train.build_parser().parse_args(["--attention", "off", "--messages", "hashtag"])
    cfg = train.config_from_args(parsed)
    assert (cfg.attention, cfg.messages, cfg.graph) == ("off", "hashtag", "pairs")
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--graph", "star"])
