"""features.py: spherical k-means and soft memberships, checked against planted clusters and brute force."""

import itertools

import numpy as np
import pytest
import torch

import features


def _planted(seed=0, per=20, noise=0.05):
    """Rows around three orthogonal directions of R^8 (unit norm) and each row's direction."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(8)[:3]                                                   # [3, 8]
    label = torch.arange(3).repeat_interleave(per)                               # [3 per]
    x = centres[label] + noise * torch.randn(len(label), 8, generator=gen)
    return features.unit_rows(x), label, centres


def test_kmeans_finds_planted_clusters():
    x, label, centres = _planted()
    centroids = features.spherical_kmeans(x, 3, seed=0)
    assert centroids.norm(dim=1) == pytest.approx(torch.ones(3), abs=1e-6)
    match = centroids @ centres.t()                                              # [3, 3] cosines
    assert sorted(match.argmax(1).tolist()) == [0, 1, 2] and (match.max(1).values > 0.99).all()
    nearest = (x @ centroids.t()).argmax(1)
    for k in range(3):                                                           # one centroid per planted cluster
        assert nearest[label == k].unique().numel() == 1


def test_kmeans_reaches_the_best_partition_of_a_small_set():
    """On 7 points in R^3 every split into two clusters is tried by hand; k-means with restarts finds the best
    summed cosine to the normalised cluster sums."""
    x = features.unit_rows(torch.randn(7, 3, generator=torch.Generator().manual_seed(3)))

    def score(assign):
        sums = torch.stack([x[assign == k].sum(0) for k in range(2)])
        return float((x * features.unit_rows(sums)[assign]).sum())

    best = max(score(torch.tensor(a)) for a in itertools.product(range(2), repeat=7) if 0 < sum(a) < 7)
    centroids = features.spherical_kmeans(x, 2, seed=0, restarts=5)
    assert float((x @ centroids.t()).max(1).values.sum()) == pytest.approx(best, abs=1e-5)


def test_kmeans_is_seeded_and_survives_duplicate_rows():
    x, _, _ = _planted(per=5)
    assert torch.equal(features.spherical_kmeans(x, 4, seed=7), features.spherical_kmeans(x, 4, seed=7))
    same = features.unit_rows(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    centroids = features.spherical_kmeans(same, 4, seed=0)                       # more clusters than distinct rows
    assert centroids.shape == (4, 2) and torch.isfinite(centroids).all()
    with pytest.raises(ValueError, match="expected 1 <= k <= 4"):
        features.spherical_kmeans(same, 5)


def test_memberships_are_a_softmax_over_cosines():
    x, _, centres = _planted()
    x = 3.0 * x                                                                  # the norm does not matter
    m = features.memberships(x, centres, 0.1)
    assert m.sum(1) == pytest.approx(torch.ones(len(x)), abs=1e-6)
    expected = torch.softmax(features.unit_rows(x) @ centres.t() / 0.1, dim=1)
    assert torch.allclose(m, expected, atol=1e-6)
    sharper = features.memberships(x, centres, 0.02)
    assert (sharper.max(1).values >= m.max(1).values - 1e-6).all()
    with pytest.raises(ValueError, match="positive temperature"):
        features.memberships(x, centres, 0.0)


def test_cluster_blocks_fit_on_the_given_rows_only(monkeypatch):
    """Changing the rows outside ``fit_rows`` changes their memberships, never the fitted rows' (nor chunking)."""
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((40, 5)).astype(np.float32), rng.standard_normal((40, 3)).astype(np.float32)]
    fit = np.arange(0, 40, 2)                                                    # the even rows
    first = features.cluster_blocks(blocks, fit, 4, 0.1, seed=0)
    assert first.shape == (40, 4) and first.dtype == np.float32
    changed = [b.copy() for b in blocks]
    changed[0][1::2] = rng.standard_normal((20, 5))                              # only rows outside the fit
    monkeypatch.setattr(features, "CHUNK", 7)                                    # several matrix products
    second = features.cluster_blocks(changed, fit, 4, 0.1, seed=0)
    assert np.allclose(first[fit], second[fit], atol=1e-6)
    assert not np.allclose(first[1::2], second[1::2], atol=1e-3)
