"""diagnose.py: its hits by kind add up to the evaluation's, the video swap changes only what uses the
video, and the command line reports a run or refuses in one line."""

import json
import math
import shutil

import pytest
import torch

import diagnose
import evaluation
import make_data
import train
from baselines import UserPopularity
from model import Config


@pytest.fixture(scope="module")
def gcn_scorer(tiny):
    torch.manual_seed(0)
    model = train.build_model(Config(dim_latent=8), tiny).eval()   # untrained: continuous, tie-free scores
    with torch.no_grad():
        return model.scorer()


def test_hits_by_kind_add_up_to_the_evaluations_hits(tiny, gcn_scorer):
    with torch.no_grad():
        diag = diagnose.by_kind(tiny, tiny.test, gcn_scorer, 10)
        per_line = evaluation.evaluate(tiny.test, gcn_scorer, ks=(10,), per_line=True)["per_line"]["recall@10"]
    positives = (tiny.test.pos_ptr[1:] - tiny.test.pos_ptr[:-1]).double()              # k of each line
    hits = sum(n * share for n, share in diag["hits"].values())
    assert hits == pytest.approx(float((per_line.double() * positives).sum()), abs=1e-6)
    assert sum(n for n, _ in diag["hits"].values()) == len(tiny.test.pos)
    # the same positives by their user's training uses: the same hits, the new ones under 0 uses
    assert sum(n * share for n, share in diag["by_uses"].values()) == pytest.approx(hits, abs=1e-6)
    assert diag["by_uses"][0][0] == sum(n for kind, (n, _) in diag["hits"].items() if kind.endswith("new"))
    assert set(diag["by_uses"]) <= set(range(diagnose.MAX_USES + 1)) and len(diag["by_uses"]) > 2


def test_ndcg_parts_by_uses_add_up_to_the_evaluations_ndcg(tiny, gcn_scorer):
    for k in (3, 10):                   # at 3 some lines have more positives than k
        with torch.no_grad():
            diag = diagnose.by_kind(tiny, tiny.test, gcn_scorer, k)
            out = evaluation.evaluate(tiny.test, gcn_scorer, ks=(k,))
        assert sum(diag["ndcg_by_uses"].values()) == pytest.approx(out[f"ndcg@{k}"], abs=1e-6)
        assert set(diag["ndcg_by_uses"]) == set(diag["by_uses"])
        assert len([part for part in diag["ndcg_by_uses"].values() if part > 0]) > 1
        # every group with hits has their mean rank, within 1..k
        assert set(diag["hit_rank_by_uses"]) == {u for u, (_, share) in diag["by_uses"].items() if share > 0}
        assert all(1 <= r <= k for r in diag["hit_rank_by_uses"].values())


def test_ndcg_part_and_hit_rank_against_counting_by_hand(tiny):
    scorer = UserPopularity(tiny.train, tiny.graph).scorer()
    with torch.no_grad():
        diag = diagnose.by_kind(tiny, tiny.test, scorer, 10)
        lines = torch.arange(len(tiny.test))
        cand, pos_mask, valid = evaluation.candidates(tiny.test, lines)
        line, col, rank = evaluation.positive_ranks(scorer(tiny.test.users, tiny.test.videos, cand), pos_mask, valid)
    part, ranks = {}, {}
    for b, j, r in zip(line.tolist(), col.tolist(), rank.tolist()):
        user, h = int(tiny.test.users[b]), int(cand[b, j])
        uses = min(sum(1 for u, _, t in tiny.train.tolist() if u == user and t == h), diagnose.MAX_USES)
        k_line = min(int(pos_mask[b].sum()), 10)
        idcg = sum(1 / math.log2(i + 2) for i in range(k_line))
        part[uses] = part.get(uses, 0.0) + (1 / math.log2(r + 1) / idcg / len(tiny.test) if r <= 10 else 0.0)
        if r <= 10:
            ranks.setdefault(uses, []).append(r)
    assert diag["ndcg_by_uses"] == pytest.approx(part, abs=1e-9)
    assert diag["hit_rank_by_uses"] == pytest.approx({u: sum(v) / len(v) for u, v in ranks.items()})


def test_hits_by_uses_against_counting_by_hand(tiny):
    with torch.no_grad():
        diag = diagnose.by_kind(tiny, tiny.test, UserPopularity(tiny.train, tiny.graph).scorer(), 10)
    split = tiny.test
    positives = {}
    for i in range(len(split)):
        user = int(split.users[i])
        for h in split.pos[split.pos_ptr[i]: split.pos_ptr[i + 1]].tolist():
            uses = sum(1 for u, _, t in tiny.train.tolist() if u == user and t == h)
            positives[min(uses, diagnose.MAX_USES)] = positives.get(min(uses, diagnose.MAX_USES), 0) + 1
    assert {uses: n for uses, (n, _) in diag["by_uses"].items()} == positives


def test_kinds_split_every_positive_and_userpop_never_finds_a_new_topical_one(tiny):
    with torch.no_grad():
        diag = diagnose.by_kind(tiny, tiny.test, UserPopularity(tiny.train, tiny.graph).scorer(), 10)
    assert set(diag["hits"]) <= {"generic seen", "generic new", "topical seen", "topical new"}
    assert diag["hits"]["topical new"][1] == 0.0                     # a count of 0 never beats a used tag
    assert diag["hits"]["generic seen"][1] > diag["hits"]["topical new"][1]


def test_swapping_the_video_leaves_a_video_blind_ranker_alone(tiny, gcn_scorer):
    with torch.no_grad():
        blind = diagnose.swapped_recall(tiny, tiny.test, UserPopularity(tiny.train, tiny.graph).scorer(), 10, 0)
        seeing = diagnose.swapped_recall(tiny, tiny.test, gcn_scorer, 10, 0)
        own = evaluation.evaluate(tiny.test, gcn_scorer, ks=(10,))["recall@10"]
    assert len(set(blind.values())) == 1
    assert seeing["own video"] == own
    assert seeing["anyone's video"] != own


def test_command_line_reports_a_run_and_refuses_a_missing_one(tiny_dir, tmp_path, capsys):
    cfg = Config(data_path=str(tiny_dir), dim_latent=8, num_epoch=1)
    train.run(cfg, tmp_path / "run", torch.device("cpu"), progress=False, log=lambda *a: None)
    assert diagnose.main([str(tmp_path / "run"), "--split", "val", "--k", "5"]) == 0
    out = capsys.readouterr().out
    assert "gcn_phr: hits in the top 5" in out and "userpop: hits in the top 5" in out
    assert "another video of the user" in out
    assert "part of NDCG@5" in out
    assert diagnose.main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "best.pt" in err[0]


def test_kinds_only_for_the_generators_names(tiny):
    assert set(diagnose.kinds(tiny)) == {"generic", "topical"}

    class Named:
        hashtag_names = ["t01_h0002", "gen_h0001", "travel_hike"]               # one name of someone's own data
    assert list(diagnose.kinds(Named)) == ["", "", ""]


def _topic_scorer(tiny, favour_line_topics: bool):
    """Scores 2 for every topical hashtag in (or, with ``favour_line_topics`` False, outside) the topics of the
    line's positives, 1 for the line's positives, 0 for the rest: every seen positive with enough such
    negatives misses, and only that kind of topical hashtag can outrank it."""
    topic = torch.as_tensor(diagnose.topics(tiny))                                   # [H]
    split = tiny.test
    line_of_video = {int(v): i for i, v in enumerate(split.videos.tolist())}

    def score(users, videos, cand):
        out = torch.zeros(cand.shape)
        for b, video in enumerate(videos.tolist()):
            i = line_of_video[video]
            pos = split.pos[split.pos_ptr[i]: split.pos_ptr[i + 1]]
            line_topics = topic[pos][topic[pos] >= 0]
            inside = torch.isin(topic[cand[b]], line_topics) & (topic[cand[b]] >= 0)
            favoured = inside if favour_line_topics else ~inside & (topic[cand[b]] >= 0)
            out[b] = torch.where(torch.isin(cand[b], pos), 1.0, 2.0 * favoured)
        return out
    return score


@pytest.mark.parametrize("favour_line_topics", [True, False])
def test_intruders_are_told_apart_by_the_topics_of_the_line(tiny, favour_line_topics):
    diag = diagnose.by_kind(tiny, tiny.test, _topic_scorer(tiny, favour_line_topics), 10)
    assert diag["misses"] > 0
    topical = {key: c for key, c in diag["intruders"].items() if key.startswith("topical")}
    wanted, unwanted = ("(line's topic)", "(other topic)")[:: 1 if favour_line_topics else -1]
    assert topical and all(key.endswith(wanted) for key in topical)
    assert not any(key.endswith(unwanted) for key in diag["intruders"])


def test_topics_read_from_the_generators_names(tiny):
    topic = diagnose.topics(tiny)
    names = tiny.hashtag_names
    assert all((t == -1) == n.startswith("gen_h") for t, n in zip(topic.tolist(), names))
    assert all(int(n[1:n.index("_")]) == t for t, n in zip(topic.tolist(), names) if t >= 0)
    assert len(set(topic.tolist()) - {-1}) > 1

    class Named:
        hashtag_names = ["t01_h0002", "travel_hike"]
    assert diagnose.topics(Named).tolist() == [-1, -1]


@pytest.mark.parametrize("ranker", ["userpop", "gcn"])
def test_negatives_above_the_habits_against_counting_by_hand(tiny, gcn_scorer, ranker):
    # the hits used MAX_USES+ times: every negative scored at least as high is counted once, under its kind and
    # how often the user used it against the positive; counting ranks none it counts less above one
    scorer = UserPopularity(tiny.train, tiny.graph).scorer() if ranker == "userpop" else gcn_scorer
    with torch.no_grad():
        diag = diagnose.by_kind(tiny, tiny.test, scorer, 10)
        lines = torch.arange(len(tiny.test))
        cand, pos_mask, valid = evaluation.candidates(tiny.test, lines)
        scores = scorer(tiny.test.users, tiny.test.videos, cand)
        line, col, rank = evaluation.positive_ranks(scores, pos_mask, valid)
    uses = {}
    for u, _, t in tiny.train.tolist():
        uses[u, t] = uses.get((u, t), 0) + 1
    hits, above, less = 0, 0, 0
    for b, j, r in zip(line.tolist(), col.tolist(), rank.tolist()):
        user = int(tiny.test.users[b])
        times = uses.get((user, int(cand[b, j])), 0)
        if r > 10 or times < diagnose.MAX_USES:
            continue
        hits += 1
        for c in range(tiny.test.negatives.size(1)):
            if scores[b, c] >= scores[b, j]:
                above += 1
                less += 0 < uses.get((user, int(cand[b, c])), 0) < times
    assert hits > 0 and diag["habit_hits"] == hits
    assert sum(diag["habit_intruders"].values()) * hits == pytest.approx(above)
    assert sum(c for key, c in diag["habit_intruders"].items() if key.endswith("used less")) * hits \
        == pytest.approx(less)
    if ranker == "userpop":
        assert above > 0 and less == 0
        assert all(" seen" in key and not key.endswith("used less") for key in diag["habit_intruders"])
    else:
        assert less > 0 and any(" new" in key for key in diag["habit_intruders"])


def test_reference_scorer_gives_the_figures_make_data_stored(tiny_dir, tiny):
    stored = json.loads((tiny_dir / "meta.json").read_text())["generator"]
    for name in make_data.REFERENCES:
        got = evaluation.evaluate(tiny.test, make_data.reference_scorer(tiny, name), ks=(10,))
        assert round(got["recall@10"], 4) == stored["test_recall@10"][name], name
        assert round(got["ndcg@10"], 4) == stored["test_ndcg@10"][name], name
    with pytest.raises(ValueError, match="expected one of"):
        make_data.reference_scorer(tiny, "knn")


def test_command_line_reports_a_reference_ranker_or_refuses_in_one_line(tiny_dir, tmp_path, capsys):
    assert diagnose.main(["--reference", "topic_counts", "--data_path", str(tiny_dir), "--k", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("topic_counts (the generator's reference ranker)")
    assert "topic_counts: hits in the top 5" in out and "userpop: hits in the top 5" in out
    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_dir, foreign)
    meta = json.loads((foreign / "meta.json").read_text())
    del meta["generator"]
    (foreign / "meta.json").write_text(json.dumps(meta))
    for argv in (["--reference", "oracle"], ["--reference", "oracle", "--data_path", str(foreign)],
                 [str(tmp_path), "--reference", "oracle", "--data_path", str(tiny_dir)], []):
        assert diagnose.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), (argv, err)
