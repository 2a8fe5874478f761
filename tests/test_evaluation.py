"""Tests of evaluation.py (SPEC §5): metrics checked against numbers worked out by hand."""

import math

import pytest
import torch

from data_load import Split
from evaluation import METRICS, candidates, evaluate, format_table, rank_metrics

INV_LOG2_3 = 1 / math.log2(3)  # discount of rank 2, 0.6309
INV_LOG2_5 = 1 / math.log2(5)  # discount of rank 4, 0.4307
NEG_INF = float("-inf")


def metrics_of(scores, pos, valid, ks):
    return rank_metrics(
        scores=torch.tensor(scores, dtype=torch.float32),
        pos_mask=torch.tensor(pos),
        valid_mask=torch.tensor(valid),
        ks=ks,
    )


def assert_metrics(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], torch.tensor(value, dtype=torch.float32), msg=name)


def random_split(num_lines: int, num_neg: int, num_tag: int, max_pos: int, seed: int) -> Split:
    """Split with distinct hashtags per line (negatives never positives); video id = line."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, max_pos + 1, (num_lines,), generator=gen)  # [L]
    tags = torch.stack(
        [torch.randperm(num_tag, generator=gen)[: num_neg + max_pos] for _ in range(num_lines)]
    )  # [L, N + max_pos]
    real = torch.arange(max_pos) < counts.unsqueeze(1)  # [L, max_pos]
    return Split(
        users=torch.randint(0, 7, (num_lines,), generator=gen),
        videos=torch.arange(num_lines),
        negatives=tags[:, :num_neg],
        pos_ptr=torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, dim=0)]),
        pos=tags[:, num_neg:][real],
    )


def test_single_line_by_hand():
    # Scores descend along the columns, positives in columns 1 and 3 -> ranks 2 and 4, k = 2.
    got = metrics_of(
        scores=[[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]],
        pos=[[False, True, False, True, False, False]],
        valid=[[True] * 6],
        ks=(1, 3, 5),
    )
    assert_metrics(
        got,
        {
            # K=1: rank 1 is a negative -> nothing.
            "precision@1": [0.0], "recall@1": [0.0], "ndcg@1": [0.0], "hit@1": [0.0],
            # K=3: 1 hit (rank 2). P = 1/3, R = 1/2, NDCG = (1/log2 3) / (1 + 1/log2 3).
            "precision@3": [1 / 3], "recall@3": [0.5], "hit@3": [1.0],
            "ndcg@3": [INV_LOG2_3 / (1 + INV_LOG2_3)],
            # K=5: 2 hits (ranks 2, 4). P = 2/5, R = 1,
            #      NDCG = (1/log2 3 + 1/log2 5) / (1 + 1/log2 3).
            "precision@5": [0.4], "recall@5": [1.0], "hit@5": [1.0],
            "ndcg@5": [(INV_LOG2_3 + INV_LOG2_5) / (1 + INV_LOG2_3)],
        },
    )  # fmt: skip


def test_batch_with_different_k_and_padding():
    # N = 3 negatives, then up to K_max = 3 positives.
    # Line A: k = 1; its two padding slots are scored 100 and must not count.
    #   order 0.5(neg) 0.3(pos) 0.2 0.1 -> positive at rank 2.
    # Line B: k = 3; order 0.9(neg) 0.8(pos) 0.7(pos) 0.2(neg) 0.1(neg) 0.05(pos) -> ranks 2, 3, 6.
    got = metrics_of(
        scores=[[0.5, 0.2, 0.1, 0.3, 100.0, 100.0], [0.9, 0.1, 0.2, 0.8, 0.05, 0.7]],
        pos=[[False, False, False, True, False, False], [False, False, False, True, True, True]],
        valid=[[True, True, True, True, False, False], [True] * 6],
        ks=(1, 2, 5),
    )
    assert_metrics(
        got,
        {
            # K=1: both lines have a negative on top.
            "precision@1": [0.0, 0.0], "recall@1": [0.0, 0.0],
            "ndcg@1": [0.0, 0.0], "hit@1": [0.0, 0.0],
            # K=2: A 1 hit of k=1 -> P 1/2, R 1, NDCG (1/log2 3) / 1.
            #      B 1 hit of k=3 -> P 1/2, R 1/3, NDCG (1/log2 3) / (1 + 1/log2 3).
            "precision@2": [0.5, 0.5], "recall@2": [1.0, 1 / 3], "hit@2": [1.0, 1.0],
            "ndcg@2": [INV_LOG2_3, INV_LOG2_3 / (1 + INV_LOG2_3)],
            # K=5: A still 1 hit -> P 1/5, R 1, NDCG 1/log2 3.
            #      B 2 hits (ranks 2, 3) -> P 2/5, R 2/3,
            #      NDCG (1/log2 3 + 1/log2 4) / (1 + 1/log2 3 + 1/log2 4)  [min(k, K) = 3].
            "precision@5": [0.2, 0.4], "recall@5": [1.0, 2 / 3], "hit@5": [1.0, 1.0],
            "ndcg@5": [INV_LOG2_3, (INV_LOG2_3 + 0.5) / (1 + INV_LOG2_3 + 0.5)],
        },
    )  # fmt: skip


def test_tie_with_negatives_counts_against_the_positive():
    # The positive (column 0) ties two negatives at 0.5: it ranks behind both, at rank 3,
    # although its column comes first.
    got = metrics_of(
        scores=[[0.5, 0.5, 0.5, 0.1]],
        pos=[[True, False, False, False]],
        valid=[[True] * 4],
        ks=(2, 3),
    )
    assert_metrics(
        got,
        {
            "precision@2": [0.0], "recall@2": [0.0], "ndcg@2": [0.0], "hit@2": [0.0],
            # K=3: hit at rank 3 -> P 1/3, R 1, NDCG (1/log2 4) / 1 = 0.5.
            "precision@3": [1 / 3], "recall@3": [1.0], "ndcg@3": [0.5], "hit@3": [1.0],
        },
    )  # fmt: skip


def test_tied_positives_follow_tied_negatives():
    # Positives in columns 0 and 1 tie a negative at 0.5; another negative scores 0.7.
    # Order: 0.7(neg) 0.5(neg) 0.5(pos) 0.5(pos) -> positive ranks 3 and 4, k = 2.
    got = metrics_of(
        scores=[[0.5, 0.5, 0.7, 0.5]],
        pos=[[True, True, False, False]],
        valid=[[True] * 4],
        ks=(3, 4),
    )
    assert_metrics(
        got,
        {
            # K=3: 1 hit -> P 1/3, R 1/2, NDCG (1/log2 4) / (1 + 1/log2 3).
            "precision@3": [1 / 3], "recall@3": [0.5], "hit@3": [1.0],
            "ndcg@3": [0.5 / (1 + INV_LOG2_3)],
            # K=4: 2 hits -> P 1/2, R 1, NDCG (1/log2 4 + 1/log2 5) / (1 + 1/log2 3).
            "precision@4": [0.5], "recall@4": [1.0], "hit@4": [1.0],
            "ndcg@4": [(0.5 + INV_LOG2_5) / (1 + INV_LOG2_3)],
        },
    )  # fmt: skip


def test_padding_never_outranks_a_valid_candidate_even_at_minus_inf():
    # Column 0 is padding at -inf; the positive (column 3) is also -inf. Valid order:
    # 0.3(neg) 0.2(neg) -inf(pos) -> rank 3. Padding placed before it would push it to rank 4.
    got = metrics_of(
        scores=[[NEG_INF, 0.3, 0.2, NEG_INF]],
        pos=[[False, False, False, True]],
        valid=[[False, True, True, True]],
        ks=(3,),
    )
    assert_metrics(got, {"precision@3": [1 / 3], "recall@3": [1.0], "ndcg@3": [0.5], "hit@3": [1.0]})


def test_positive_flag_on_padding_is_ignored():
    # pos_mask is True on the padding slot (column 3, the top score). It must neither be a hit
    # nor count in k: the one real positive (column 2) is at rank 2, so K=1 gives 0 and R@2 = 1/1.
    got = metrics_of(
        scores=[[0.9, 0.1, 0.5, 5.0]],
        pos=[[False, False, True, True]],
        valid=[[True, True, True, False]],
        ks=(1, 2),
    )
    assert_metrics(
        got,
        {
            "precision@1": [0.0], "recall@1": [0.0], "ndcg@1": [0.0], "hit@1": [0.0],
            "precision@2": [0.5], "recall@2": [1.0], "ndcg@2": [INV_LOG2_3], "hit@2": [1.0],
        },
    )  # fmt: skip


def test_k_larger_than_the_number_of_candidates():
    # C = 4, K = 10. Order 0.9(pos) 0.2(neg) 0.1(neg) 0.05(pos) -> ranks 1 and 4, k = 2.
    # P = 2/10, R = 1, NDCG = (1 + 1/log2 5) / (1 + 1/log2 3).
    got = metrics_of(
        scores=[[0.1, 0.2, 0.9, 0.05]],
        pos=[[False, False, True, True]],
        valid=[[True] * 4],
        ks=(10,),
    )
    assert_metrics(
        got,
        {
            "precision@10": [0.2], "recall@10": [1.0], "hit@10": [1.0],
            "ndcg@10": [(1 + INV_LOG2_5) / (1 + INV_LOG2_3)],
        },
    )  # fmt: skip


def test_perfect_ranking():
    # 50 lines, 30 negatives, k in 1..12 (so k both below and above K). Positives score
    # above every negative: NDCG = Hit = 1, P = min(k, K)/K, R = min(k, K)/k.
    ks = (1, 5, 10)
    split = random_split(num_lines=50, num_neg=30, num_tag=200, max_pos=12, seed=0)
    cand, pos_mask, valid_mask = candidates(split, torch.arange(50))
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(cand.shape, generator=gen) + 2.0 * pos_mask  # positives in [2, 3)
    got = rank_metrics(scores, pos_mask, valid_mask, ks)
    k = (split.pos_ptr[1:] - split.pos_ptr[:-1]).float()  # [L]
    assert k.min() < 5 < k.max()
    for cut in ks:
        best = torch.clamp(k, max=cut)
        torch.testing.assert_close(got[f"precision@{cut}"], best / cut)
        torch.testing.assert_close(got[f"recall@{cut}"], best / k)
        torch.testing.assert_close(got[f"ndcg@{cut}"], torch.ones(50))
        torch.testing.assert_close(got[f"hit@{cut}"], torch.ones(50))


def test_constant_scorer_scores_zero():
    # Every candidate ties, so the N >= K negatives take the top K ranks.
    split = random_split(num_lines=20, num_neg=10, num_tag=50, max_pos=4, seed=2)
    result = evaluate(split, lambda users, videos, cand: torch.zeros(cand.shape), ks=(5, 10))
    assert result == {f"{name}@{k}": 0.0 for k in (5, 10) for name in METRICS}


def test_worst_ranking_scores_zero_but_not_with_large_k():
    # Positives below every negative: nothing in the top N; with K = N + 1 the first positive
    # enters at rank N + 1, so Hit@(N+1) = 1.
    split = random_split(num_lines=8, num_neg=6, num_tag=30, max_pos=3, seed=3)
    _, pos_mask, valid_mask = candidates(split, torch.arange(8))
    got = rank_metrics(-pos_mask.float(), pos_mask, valid_mask, ks=(6, 7))
    assert torch.equal(got["hit@6"], torch.zeros(8))
    assert torch.equal(got["hit@7"], torch.ones(8))


def test_nan_in_a_valid_score_raises():
    with pytest.raises(ValueError, match="NaN"):
        metrics_of([[0.1, float("nan"), 0.3]], [[False, False, True]], [[True] * 3], ks=(1,))


def test_nan_in_padding_is_ignored():
    got = metrics_of([[0.1, 0.3, float("nan")]], [[False, True, False]], [[True, True, False]], ks=(1,))
    assert got["hit@1"].tolist() == [1.0]


def test_line_without_positive_raises():
    with pytest.raises(ValueError, match="line 1"):
        metrics_of([[0.1, 0.3], [0.2, 0.4]], [[False, True], [False, False]], [[True] * 2] * 2, ks=(1,))


@pytest.mark.parametrize("ks", [(), (0,), (5, -1), (2.5,)])
def test_bad_ks_raise(ks):
    with pytest.raises(ValueError, match="ks"):
        metrics_of([[0.1, 0.3]], [[False, True]], [[True, True]], ks=ks)


def test_candidates_by_hand():
    # Line 0: positives [1]; line 1: [2, 3, 4]; line 2: [5, 6]. N = 2.
    split = Split(
        users=torch.tensor([0, 1, 2]),
        videos=torch.tensor([7, 8, 9]),
        negatives=torch.tensor([[10, 11], [12, 13], [14, 15]]),
        pos_ptr=torch.tensor([0, 1, 4, 6]),
        pos=torch.tensor([1, 2, 3, 4, 5, 6]),
    )
    # Lines (2, 0): K_max = 2, line 0 padded once with hashtag 0.
    cand, pos_mask, valid_mask = candidates(split, torch.tensor([2, 0]))
    assert torch.equal(cand, torch.tensor([[14, 15, 5, 6], [10, 11, 1, 0]]))
    assert torch.equal(pos_mask, torch.tensor([[False, False, True, True], [False, False, True, False]]))
    assert torch.equal(valid_mask, torch.tensor([[True, True, True, True], [True, True, True, False]]))
    # Line 1 alone: K_max = 3, no padding.
    cand, pos_mask, valid_mask = candidates(split, torch.tensor([1]))
    assert torch.equal(cand, torch.tensor([[12, 13, 2, 3, 4]]))
    assert torch.equal(pos_mask, torch.tensor([[False, False, True, True, True]]))
    assert valid_mask.all()


def test_evaluate_oracle_sees_aligned_users_videos_and_candidates():
    # An oracle that knows each video's positives and owner ranks perfectly only if evaluate
    # hands it the users, videos and candidates of the same lines.
    split = random_split(num_lines=23, num_neg=15, num_tag=60, max_pos=5, seed=4)
    relevant = torch.zeros(23, 60)  # [V, H]
    for line in range(23):
        relevant[split.videos[line], split.pos[split.pos_ptr[line] : split.pos_ptr[line + 1]]] = 1

    def oracle(users, videos, cand):
        assert torch.equal(users, split.users[videos])
        return relevant[videos.unsqueeze(1), cand]  # [B, C]

    result = evaluate(split, oracle, ks=(20,), batch_size=4)
    assert result["ndcg@20"] == pytest.approx(1.0)
    assert result["recall@20"] == pytest.approx(1.0)
    k = (split.pos_ptr[1:] - split.pos_ptr[:-1]).double()
    assert result["precision@20"] == pytest.approx((k / 20).mean().item())


def test_evaluate_batches_agree_with_one_batch_and_with_rank_metrics():
    split = random_split(num_lines=37, num_neg=20, num_tag=100, max_pos=6, seed=5)
    gen = torch.Generator().manual_seed(6)
    user_emb, video_emb, tag_emb = (torch.randn(n, 4, generator=gen) for n in (7, 37, 100))

    def score_fn(users, videos, cand):
        query = user_emb[users] + video_emb[videos]  # [B, 4]
        return (tag_emb[cand] * query.unsqueeze(1)).sum(dim=-1)  # [B, C]

    ks = (1, 5, 10)
    one = evaluate(split, score_fn, ks=ks, batch_size=1000, per_line=True)
    many = evaluate(split, score_fn, ks=ks, batch_size=5, per_line=True, progress=True)
    cand, pos_mask, valid_mask = candidates(split, torch.arange(37))
    direct = rank_metrics(score_fn(split.users, split.videos, cand), pos_mask, valid_mask, ks)
    assert 0.0 < one["recall@10"] < 1.0
    for name in direct:
        torch.testing.assert_close(many["per_line"][name], direct[name])
        torch.testing.assert_close(one["per_line"][name], direct[name])
        assert many[name] == pytest.approx(one[name])
        assert one[name] == pytest.approx(direct[name].double().mean().item())


def test_evaluate_rejects_scores_of_the_wrong_shape():
    split = random_split(num_lines=3, num_neg=4, num_tag=20, max_pos=2, seed=7)
    with pytest.raises(ValueError, match="shape"):
        evaluate(split, lambda users, videos, cand: torch.zeros(cand.shape[0], 4))


def test_format_table():
    metrics = {"per_line": {}}
    for row, name in enumerate(METRICS):
        metrics[f"{name}@5"] = 0.1 * (row + 1)
        metrics[f"{name}@10"] = 0.01 * (row + 1)
    assert format_table(metrics, ks=(5, 10)) == (
        "           @5      @10\n"
        "P      0.1000   0.0100\n"
        "R      0.2000   0.0200\n"
        "NDCG   0.3000   0.0300\n"
        "Hit    0.4000   0.0400"
    )
