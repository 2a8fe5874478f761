"""Video features read as soft topic memberships: spherical k-means on the training videos (``data_load.py cluster``).

GCN-PHR reads a video through one linear map (SPEC §3: z_v = LReLU(W_f f_v + b_f)). On noisy features that
reading is weak: a video's topic shows as a direction among many noisy ones, and BPR on a few thousand training
rows does not learn to sharpen it (README, "Does it learn?"). This module offers the model a sharper input
without changing the model: the features of every video are replaced by its soft memberships of K clusters,

    m_{v,k} = softmax_k( cos(f_v, c_k) / τ ),

with c_1 … c_K the centroids of spherical k-means (cosine similarity, unit-norm centroids) fitted on the
videos of the training split only, so that the validation and test videos play no part in the fit. The
memberships are written as a new dataset directory (one feature block ``clusters`` of K columns; ids, split,
negatives and names unchanged), which any ranker reads like the original.

Shape legend: V videos, F feature columns, n fitted videos, K clusters.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

CHUNK = 65536  # videos per matrix product (bounds memory at the yfcc scale)


def unit_rows(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm (an all-zero row stays zero). ``[n, F] -> [n, F]``"""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _nearest(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's most similar centroid and that cosine, ``[n]`` and ``[n]`` (rows and centroids unit-norm)."""
    best, where = [], []
    for start in range(0, x.size(0), CHUNK):
        sim = x[start:start + CHUNK] @ centroids.t()                        # [chunk, K]
        value, index = sim.max(dim=1)
        best.append(value)
        where.append(index)
    return torch.cat(best), torch.cat(where)


def _plus_plus(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding with the cosine distance 1 − cos: the first centroid uniform, each next one drawn in
    proportion to a row's distance to its nearest centroid so far. ``[n, F] -> [k, F]``"""
    first = int(torch.randint(x.size(0), (1,), generator=gen))
    chosen = [first]
    distance = (1 - x @ x[first]).clamp_min(0)                               # [n]
    for _ in range(1, k):
        weights = distance if distance.sum() > 0 else torch.ones_like(distance)
        pick = int(torch.multinomial(weights, 1, generator=gen))
        chosen.append(pick)
        distance = torch.minimum(distance, (1 - x @ x[pick]).clamp_min(0))
    return x[chosen].clone()


def spherical_kmeans(x: Tensor, k: int, seed: int = 0, restarts: int = 3, iterations: int = 100) -> Tensor:
    """Spherical k-means: ``k`` unit-norm centroids that maximise the summed cosine of each row to its nearest.

    Each restart seeds with k-means++ (cosine distance) and alternates assignment and centroid update (the
    normalised sum of a cluster's rows) until no assignment changes or ``iterations`` pass; a cluster left
    empty takes the row farthest from its centroid. The restart with the highest summed cosine wins. Seeded:
    the same rows and seed give the same centroids.

    Args:
        x (Tensor): ``[n, F]`` rows, unit-norm (:func:`unit_rows`).
        k (int): number of clusters, at most n.
        seed (int): seed of the k-means++ draws.
        restarts (int): independent seedings.
        iterations (int): at most this many updates per restart.

    Shapes: x [n, F] → [k, F]
    """
    if not 1 <= k <= x.size(0):
        raise ValueError(f"spherical_kmeans: expected 1 <= k <= {x.size(0)} rows, got k = {k}")
    gen = torch.Generator().manual_seed(seed)
    best, best_score = None, -float("inf")
    for _ in range(restarts):
        centroids = _plus_plus(x, k, gen)                                    # [k, F]
        assign = None
        for _ in range(iterations):
            cosine, new = _nearest(x, centroids)                             # [n], [n]
            if assign is not None and torch.equal(new, assign):
                break
            assign = new
            sums = torch.zeros_like(centroids).index_add_(0, assign, x)     # [k, F]
            size = torch.bincount(assign, minlength=k)                       # [k]
            for empty in (size == 0).nonzero().flatten().tolist():           # the worst-fitted row restarts it
                far = int(cosine.argmin())
                sums[empty], cosine[far] = x[far], float("inf")
            centroids = unit_rows(sums)
        score = float(_nearest(x, centroids)[0].sum())
        if score > best_score:
            best, best_score = centroids, score
    return best


def memberships(x: Tensor, centroids: Tensor, temperature: float) -> Tensor:
    """Soft memberships ``softmax_k(cos(x_v, c_k) / temperature)``, each row summing to 1.

    Shapes: x [V, F] (any norm; rows are normalised here), centroids [K, F] unit-norm → [V, K]
    """
    if temperature <= 0:
        raise ValueError(f"memberships: expected a positive temperature, got {temperature}")
    out = []
    for start in range(0, x.size(0), CHUNK):
        sim = unit_rows(x[start:start + CHUNK]) @ centroids.t()              # [chunk, K]
        out.append(torch.softmax(sim / temperature, dim=1))
    return torch.cat(out)


def cluster_blocks(blocks: list[np.ndarray], fit_rows: np.ndarray, k: int, temperature: float, seed: int,
                   restarts: int = 3, iterations: int = 100) -> np.ndarray:
    """The ``[V, K]`` float32 memberships of every video from its feature blocks: the blocks are put side by
    side and every row normalised, the centroids fitted on ``fit_rows`` (the training videos) only.

    Args:
        blocks (list): ``[V, F_i]`` feature blocks (memory-mapped arrays are read once).
        fit_rows (np.ndarray): ``[n]`` the videos the clusters are fitted on.
        k, temperature, seed, restarts, iterations: as :func:`spherical_kmeans` and :func:`memberships`.
    """
    x = unit_rows(torch.from_numpy(np.concatenate([np.asarray(b, dtype=np.float32) for b in blocks], axis=1)))
    centroids = spherical_kmeans(x[torch.from_numpy(np.asarray(fit_rows, dtype=np.int64))], k, seed=seed,
                                 restarts=restarts, iterations=iterations)   # [K, F]
    return memberships(x, centroids, temperature).numpy().astype(np.float32)
