"""Synthetic micro-video tagging data with planted, personalized structure (SPEC §2).

The paper's data (SPEC §2.1) cannot be downloaded, so every test, demo and benchmark of this project
runs on data generated here. The generator plants a signal that only a model using both the user and
the video content can fully recover, writes it as ``posts.tsv`` plus one feature file per modality,
and sends it through ``data_load.prepare`` (the seeded split of SPEC §2.3), like anyone's own data.

Generative process (every draw comes from one ``np.random.Generator`` seeded with ``--seed``)
--------------------------------------------------------------------------------------------
Shape legend: U users, H hashtags, V videos, T topics, M the most topics of a user, S personal
hashtags per (user, block), W the largest block, B a chunk of videos or users, F_m the feature dim
of modality m, C candidates of a test line.

1. **Hashtags.** The H hashtags are split into T + 1 blocks of (almost) equal size: T topics and one
   *generic* block (content-free tags in the manner of #love or #photooftheday). Inside block t the
   hashtag of popularity rank r, named ``t<t>_h<r>`` (``gen_h<r>`` in the generic block), has weight
   ``pop_t(r) ∝ (r + 1)^-a`` (names are for inspection; models only see ids). Topics have weights
   ``ρ_t ∝ (t + 1)^-a_topic``.
2. **Users.** User u has a main topic drawn ∝ ρ (every topic is the main topic of at least one
   user) and ``m_u − 1`` further distinct topics drawn ∝ ρ, ``m_u ~ U{user_topics}``, with weights
   ``θ_u ~ Dirichlet(α)`` sorted so that the main topic weighs most. In each of her blocks (her
   topics and the generic one) she has S personal hashtags, drawn without replacement ∝ ``pop_t^γ``;
   the j-th one drawn has weight ``π(j)``:
   - in a topic, the first c are her habits, ``π(j) = (1 − s) (j + 1)^-b / Σ_{i<c} (i + 1)^-b``, and
     the other S − c, her occasional vocabulary, share s equally;
   - in the generic block only the first G count, her signature tags: ``π(j) ∝ (j + 1)^-b, j < G``.
   Inside block t she tags by ``P(h | u, t) = λ · π_{u,t}(h) + (1 − λ) · pop_t(h)``.
3. **Videos.** User u posts ``n_u = 5 + Multinomial(V − 5U, w)`` videos, ``w ~ LogNormal(0, σ_w)``
   (heavy tail, exact total V). A video is about one topic ``t_1 ~ θ_u`` or, with probability q,
   about two (``t_2 ~ θ_u`` without ``t_1``), with mixture ``β_v = (b, 1 − b)``, ``b ~ U(0.5, 0.85)``;
   a user's first video is about her main topic only. It gets ``k_v = 1 + Binomial(4, 0.45)``
   distinct hashtags (mean 2.8), drawn without replacement (Gumbel top-k) from

       P(h | u, v) = (1 − σ) Σ_j β_{v,j} P(h | u, t_j) + σ P(h | u, generic).

   A hashtag that no draw produced is then appended to a random video whose first topic is the
   hashtag's topic (any video for a generic one), so that all H hashtags are used.
4. **Features.** Modality m sees the topic mixture (β_v as a [T] vector; the generic block leaves no
   trace) through its own noise: ``x_{v,m} = normalize((β_v + σ_m ε) P_m + τ η)`` with
   ``ε ~ N(0, I_T)``, ``P_m`` a fixed random [T, F_m] projection with unit-norm rows,
   ``η ~ N(0, I_{F_m} / F_m)``, and L2 normalisation of every row; float32. Textual is the most
   informative (smallest σ_m), visual the least.

Reference rankers (stored in ``meta.json`` under ``"generator"``)
-----------------------------------------------------------------
Test Recall@10 and NDCG@10 under the protocol of SPEC §5 (``evaluation.evaluate``) of rankers that know
the generating parameters:

- ``oracle``: ``log P(h | u, v)``, the generating distribution itself (user + content);
- ``content_only``: ``log P(h | v)``: the same mixture with ``P(h | t)`` marginalised over users
  (user u weighted by her expected number of draws from block t, ``n_u × her weight of t``);
- ``user_only``: ``log P(h | u) = log [(1 − σ) Σ_t θ_{u,t} P(h | u, t) + σ P(h | u, generic)]``;
- ``userpop`` (empirical, for reference): the user's hashtag counts in the training split, global
  training counts breaking ties;
- ``topic_counts`` (empirical, told the topics): what counting the training split can do for a ranker that
  understands the content perfectly. Every training row counts for the (user, topic, hashtag) triples of
  its video's topics, weighted by the video's true mixture β; a line scores
  ``Σ_t β_{v,t} [n(u, t, h) + n(t, h) / n(t)] + [h generic] n(u, h)`` (the user's own counts in the
  video's topics, the topics' hashtag shares, the user's own counts of content-free hashtags; global
  counts break ties). The oracle knows what the split never shows: the personal hashtags a user has not
  used yet, and her exact habits. A model trained on the split sees only what the split shows, so
  ``topic_counts`` is the nearer yardstick of what a content-aware model can reach (not a bound: a
  model may smooth better than counts do).
- ``topic_counts_read`` (empirical, told the training videos' topics only): ``topic_counts`` with the mixture
  of every video outside the training split read from its features (:func:`read_topics`: a ridge regression of
  β on the features of the training videos; a video's two largest read weights, clipped at 0, raised to the 4th
  power and renormalised). It measures what the feature noise leaves of ``topic_counts``: what a ranker can
  reach that counts the split and reads a new video's topics with a linear map.

Calibration. A ranker misses a positive when about ten of the line's N negatives, drawn from all H
hashtags, score above it, i.e. when some 10·H/N hashtags are more likely. About N / T negatives fall
in the video's own topic, which keeps content alone imperfect. The user ranker has to be confused at
the scale of H/N: at ``tiny``/``small`` (H/N = 1.5) two to four topics with six personal hashtags
each suffice; at ``instagram``/``yfcc`` (H/N ≈ 12 and 23) users follow four to eight topics with a
personal vocabulary of S ≈ 3.6 H/N hashtags. The signature tags make the user's own history
predictive, as people reuse their hashtags on real data. Seed 0 gives (test Recall@10 / NDCG@10):

    preset       oracle         content_only   user_only      userpop        topic_counts   topic_counts_read
    tiny         0.971 / 0.817  0.718 / 0.497  0.838 / 0.718  0.832 / 0.696  0.873 / 0.747  0.892 / 0.750
    small        0.943 / 0.788  0.523 / 0.393  0.816 / 0.693  0.698 / 0.615  0.788 / 0.685  0.784 / 0.681
    instagram    0.971 / 0.915  0.628 / 0.531  0.856 / 0.807  0.678 / 0.685  0.827 / 0.799  0.807 / 0.786
    yfcc         0.977 / 0.934  0.643 / 0.557  0.876 / 0.847  0.673 / 0.696  0.830 / 0.815  0.813 / 0.801

Usage::

    python make_data.py --preset small --out data/small --seed 0 [--format legacy]
    python make_data.py --preset yfcc --scale 4 --feature_dims 256,16,12 --num_neg 100 --no_references
    python make_data.py --preset small --noise_scale 0      # data/small-noise0: the same data, noiseless features

``--scale S`` multiplies the preset's users, hashtags, videos and topics by S (:func:`scaled`): every
topic keeps the preset's number of hashtags and every user the preset's habits, so the graph grows
by S with the same local structure (and the generator's cost, linear in S); ``--feature_dims`` and
``--num_neg`` replace the feature dimensions and the negatives per val/test line; ``--noise_scale`` multiplies
the feature noises σ_m and τ, every other draw staying the same (0: the same users, videos, hashtags and
split, with noiseless features, to measure what the feature noise costs a model). The presets themselves
never change.

The raw ``posts.tsv`` and ``<modality>.npy`` files are written to a temporary folder beside OUT and
removed once ``prepare`` has written the project format into OUT; ``--format legacy`` also writes the
released (pickled) layout of SPEC §2.2 into ``OUT/legacy``.
"""

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import data_load
import evaluation

MODALITIES = ("visual", "acoustic", "textual")
MIN_VIDEOS = 5  # videos per user, at least
MAX_TAGS = 5  # k_v = 1 + Binomial(4, 0.45) is at most 5 before unused hashtags are appended
CHUNK = 1024  # videos or users per vectorised chunk (bounds memory at the yfcc scale)
FEATURE_CHUNK = 8192  # feature rows generated and written at once
REFERENCES = ("oracle", "content_only", "user_only", "userpop", "topic_counts",  # reference rankers in meta.json
              "topic_counts_read")
READ_RIDGE, READ_POWER = 1.0, 4.0  # topic_counts_read: ridge penalty, sharpening (chosen on small's validation split)
REFERENCE_KEYS = ("test_recall@10", "test_ndcg@10")  # their figures in meta.json's "generator" record


@dataclass(frozen=True)
class Preset:
    """Sizes and generating hyper-parameters of one synthetic dataset (see the module docstring)."""

    num_user: int
    num_hashtag: int
    num_video: int
    num_topic: int  # T
    feature_dims: tuple[int, int, int]  # F_m: visual, acoustic, textual
    num_neg: int = 1000  # N, negatives per val/test line
    user_topics: tuple[int, int] = (2, 4)  # m_u ~ U{lo..hi}; M = hi topic slots per user
    personal_size: int = 6  # S, personal hashtags per (user, topic)
    tag_zipf: float = 1.2  # a
    topic_zipf: float = 0.5  # a_topic
    theta_concentration: float = 10.0  # α of θ_u ~ Dirichlet(α)
    personal_weight: float = 0.95  # λ
    personal_pop_exponent: float = 0.8  # γ
    core_size: int = 4  # c
    core_zipf: float = 0.7  # b
    spread_share: float = 0.3  # s
    generic_weight: float = 0.45  # σ
    signature_size: int = 2  # G
    two_topic_prob: float = 0.3  # q
    videos_sigma: float = 1.0  # spread of the log-normal video weights w
    noise: tuple[float, float, float] = (0.6, 0.35, 0.2)  # σ_m: visual, acoustic, textual
    feature_noise: float = 0.1  # τ

    def __post_init__(self):
        if not 2 <= self.user_topics[0] <= self.user_topics[1] <= self.num_topic:
            raise ValueError(f"Preset: expected 2 <= user_topics[0] <= user_topics[1] <= num_topic, "
                             f"got {self.user_topics} with {self.num_topic} topics")
        if self.num_user < self.num_topic:
            raise ValueError(f"Preset: expected num_user >= num_topic, got {self.num_user} < {self.num_topic}")
        if self.num_hashtag // (self.num_topic + 1) < max(MAX_TAGS, self.personal_size):
            raise ValueError(f"Preset: expected at least {max(MAX_TAGS, self.personal_size)} hashtags "
                             f"per block, got {self.num_hashtag} / {self.num_topic + 1}")
        if not (1 <= self.core_size < self.personal_size and 1 <= self.signature_size <= self.personal_size):
            raise ValueError(f"Preset: expected 1 <= core_size < personal_size and 1 <= signature_size <= "
                             f"personal_size, got {self.core_size}, {self.signature_size}, {self.personal_size}")
        if self.num_video < MIN_VIDEOS * self.num_user:
            raise ValueError(f"Preset: expected num_video >= {MIN_VIDEOS} * num_user, "
                             f"got {self.num_video} < {MIN_VIDEOS * self.num_user}")


PRESETS = {
    "tiny": Preset(num_user=30, num_hashtag=150, num_video=500, num_topic=10, feature_dims=(32, 8, 8),
                   num_neg=100),
    "small": Preset(num_user=300, num_hashtag=1500, num_video=4000, num_topic=30,
                    feature_dims=(2048, 128, 100)),
    "instagram": Preset(num_user=2303, num_hashtag=12194, num_video=48888, num_topic=30,
                        feature_dims=(2048, 128, 100), user_topics=(4, 8), personal_size=44),
    "yfcc": Preset(num_user=8126, num_hashtag=23054, num_video=134992, num_topic=30,
                   feature_dims=(2048, 128, 100), user_topics=(4, 8), personal_size=83),
}


@dataclass
class World:
    """Generating parameters. Generator hashtag ids: rank r of topic t is ``offset[t] + r``."""

    tag_topic: np.ndarray  # [H] block of each hashtag (T = generic)
    tag_pop: np.ndarray  # [H] pop_t(h), sums to 1 inside each block
    offset: np.ndarray  # [T+2] first hashtag of each block
    user_topic: np.ndarray  # [U, M+1] blocks of each user, -1 on unused slots, last = T (generic)
    user_theta: np.ndarray  # [U, M+1] θ_u, 0 on unused slots and on the generic slot
    personal: np.ndarray  # [U, M+1, S] personal hashtags (meaningful where user_topic >= 0)
    personal_w: np.ndarray  # [M+1, S] π of the j-th personal hashtag of a slot, the same for every user
    num_videos: np.ndarray  # [U] n_u


@dataclass
class Videos:
    """Generated videos, in posting (= posts.tsv) order."""

    user: np.ndarray  # [V]
    topics: np.ndarray  # [V, 2] topic ids, -1 = no second topic
    mix: np.ndarray  # [V, 2] β_v, 0 where there is no topic
    tag_ptr: np.ndarray  # [V+1] CSR offsets into tags
    tags: np.ndarray  # [sum k_v] generator hashtag ids


def _gumbel_topk(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k draws without replacement ∝ exp(logits) along the last axis, in draw order. [..., k]"""
    keys = logits + rng.gumbel(size=logits.shape)  # [..., C]
    top = np.argpartition(-keys, k - 1, axis=-1)[..., :k]  # [..., k] unordered
    order = np.argsort(-np.take_along_axis(keys, top, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(top, order, axis=-1)


def _block(offset: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hashtag ids of each given block, padded to W: ``(tags [..., W], valid [..., W])``."""
    sizes = np.diff(offset)[blocks]  # [...]
    within = np.arange(np.diff(offset).max())  # [W] rank inside a block
    valid = within < sizes[..., None]  # [..., W]
    return offset[blocks][..., None] + np.minimum(within, sizes[..., None] - 1), valid


def scaled(p: Preset, scale: float = 1.0, feature_dims: tuple[int, int, int] | None = None,
           num_neg: int | None = None) -> Preset:
    """``p`` with its users, hashtags, videos and topics multiplied by ``scale`` (rounded; a topic keeps about
    the preset's hashtags, a user her habits, so the graph grows by ``scale`` with the same local structure),
    and, when given, other ``feature_dims`` and ``num_neg``."""
    if scale <= 0:
        raise ValueError(f"scaled: expected a positive scale, got {scale}")
    grow = lambda n: max(1, round(n * scale))
    return dataclasses.replace(
        p, num_user=grow(p.num_user), num_hashtag=grow(p.num_hashtag), num_video=grow(p.num_video),
        num_topic=max(p.user_topics[1], grow(p.num_topic)),
        feature_dims=p.feature_dims if feature_dims is None else tuple(feature_dims),
        num_neg=p.num_neg if num_neg is None else num_neg)


def sample_world(p: Preset, rng: np.random.Generator) -> World:
    """Steps 1–2 of the generative process: hashtag topics and popularity, user tastes."""
    T, U, S, M = p.num_topic, p.num_user, p.personal_size, p.user_topics[1]
    sizes = np.full(T + 1, p.num_hashtag // (T + 1)) + (np.arange(T + 1) < p.num_hashtag % (T + 1))  # [T+1]
    offset = np.concatenate([[0], np.cumsum(sizes)])  # [T+2]; block T is the generic one
    tag_topic = np.repeat(np.arange(T + 1), sizes)  # [H]
    rank = np.arange(p.num_hashtag) - offset[tag_topic]  # [H] popularity rank inside the block
    tag_pop = (rank + 1.0) ** -p.tag_zipf
    tag_pop /= np.bincount(tag_topic, weights=tag_pop)[tag_topic]

    rho = (np.arange(T) + 1.0) ** -p.topic_zipf  # [T]
    main = rng.choice(T, size=U, p=rho / rho.sum())  # [U]
    main[rng.permutation(U)[:T]] = np.arange(T)  # every topic is someone's main topic
    logits = np.broadcast_to(np.log(rho), (U, T)).copy()  # [U, T]
    logits[np.arange(U), main] = -np.inf
    others = _gumbel_topk(logits, M - 1, rng)  # [U, M-1]
    num_topics = rng.integers(p.user_topics[0], M + 1, size=U)  # [U] m_u
    used = np.arange(M) < num_topics[:, None]  # [U, M]
    user_topic = np.where(used, np.concatenate([main[:, None], others], axis=1), -1)  # [U, M]
    user_topic = np.concatenate([user_topic, np.full((U, 1), T)], axis=1)  # [U, M+1] + generic
    user_theta = -np.sort(-rng.gamma(p.theta_concentration, size=(U, M)) * used, axis=1)  # [U, M] descending
    user_theta = np.concatenate([user_theta / user_theta.sum(axis=1, keepdims=True), np.zeros((U, 1))], axis=1)

    personal = np.empty((U, M + 1, S), dtype=np.int64)  # [U, M+1, S]
    for lo in range(0, U, CHUNK):
        block, valid = _block(offset, np.maximum(user_topic[lo:lo + CHUNK], 0))  # [B, M+1, W]
        logits = np.where(valid, p.personal_pop_exponent * np.log(tag_pop[block]), -np.inf)
        personal[lo:lo + CHUNK] = np.take_along_axis(block, _gumbel_topk(logits, S, rng), axis=-1)
    core = (np.arange(p.core_size) + 1.0) ** -p.core_zipf  # [c]
    spread = np.full(S - p.core_size, p.spread_share / (S - p.core_size))  # [S-c]
    topic_w = np.concatenate([(1 - p.spread_share) * core / core.sum(), spread])  # [S] in draw order
    signature = (np.arange(S) + 1.0) ** -p.core_zipf * (np.arange(S) < p.signature_size)  # [S]
    personal_w = np.concatenate([np.tile(topic_w, (M, 1)), signature[None] / signature.sum()])  # [M+1, S]

    video_w = rng.lognormal(sigma=p.videos_sigma, size=U)  # [U]
    num_videos = MIN_VIDEOS + rng.multinomial(p.num_video - MIN_VIDEOS * U, video_w / video_w.sum())
    return World(tag_topic=tag_topic, tag_pop=tag_pop, offset=offset, user_topic=user_topic,
                 user_theta=user_theta, personal=personal, personal_w=personal_w, num_videos=num_videos)


def _log(x: np.ndarray) -> np.ndarray:
    """log with log(0) = -inf and no warning."""
    with np.errstate(divide="ignore"):
        return np.log(x)


def sample_videos(p: Preset, w: World, rng: np.random.Generator) -> Videos:
    """Step 3: each video's user, topics and hashtags, in a random posting order."""
    V, T, M, lam, sig = p.num_video, p.num_topic, p.user_topics[1], p.personal_weight, p.generic_weight
    user = rng.permutation(np.repeat(np.arange(p.num_user), w.num_videos))  # [V]
    log_theta = _log(w.user_theta[user, :M])  # [V, M]
    slot1 = _gumbel_topk(log_theta, 1, rng)[:, 0]  # [V]
    log_theta[np.arange(V), slot1] = -np.inf
    slot2 = _gumbel_topk(log_theta, 1, rng)[:, 0]  # [V] (m_u >= 2, so always a real slot)
    two = rng.random(V) < p.two_topic_prob  # [V]
    b = rng.uniform(0.5, 0.85, size=V)  # [V]
    first = np.unique(user, return_index=True)[1]  # [U] each user's first video
    slot1[first], two[first] = 0, False  # ... is about her main topic only
    topics = w.user_topic[user[:, None], np.stack([slot1, slot2], axis=1)]  # [V, 2]
    topics[~two, 1] = -1
    mix = np.where(two[:, None], np.stack([b, 1.0 - b], axis=1), [1.0, 0.0])  # [V, 2] β_v

    # the three blocks a video draws from: its topics (weight 1 - σ) and the generic block (σ)
    slots = np.stack([slot1, slot2, np.full(V, M)], axis=1)  # [V, 3]
    weight = np.concatenate([(1 - sig) * mix, np.full((V, 1), sig)], axis=1)  # [V, 3]
    num_tags = 1 + rng.binomial(MAX_TAGS - 1, 0.45, size=V)  # [V] k_v
    picked = np.empty((V, MAX_TAGS), dtype=np.int64)  # [V, 5] drawn hashtags, in draw order
    for lo in range(0, V, CHUNK):
        sl = slice(lo, min(lo + CHUNK, V))
        u = user[sl, None]  # [B, 1]
        t = w.user_topic[u, slots[sl]]  # [B, 3]
        block, valid = _block(w.offset, t)  # [B, 3, W]
        prob = (1 - lam) * w.tag_pop[block]  # [B, 3, W]
        pos = w.personal[u, slots[sl]] - w.offset[t][..., None]  # [B, 3, S] rank inside the block
        bonus = lam * w.personal_w[slots[sl]]  # [B, 3, S]
        np.put_along_axis(prob, pos, np.take_along_axis(prob, pos, axis=-1) + bonus, axis=-1)
        logits = np.where(valid, _log(prob * weight[sl, :, None]), -np.inf).reshape(len(t), -1)  # [B, 3W]
        top = _gumbel_topk(logits, MAX_TAGS, rng)  # [B, 5]
        picked[sl] = np.take_along_axis(block.reshape(len(t), -1), top, axis=1)

    keep = np.arange(MAX_TAGS) < num_tags[:, None]  # [V, 5]
    unused = np.setdiff1d(np.arange(p.num_hashtag), picked[keep])  # [X] hashtags no draw produced
    # host: a random video whose first topic is the hashtag's topic (any video for a generic one)
    by_topic = np.argsort(topics[:, 0], kind="stable")  # [V] videos grouped by first topic
    start = np.searchsorted(topics[by_topic, 0], np.arange(T + 2))  # [T+2]; start[T] = start[T+1] = V
    t = w.tag_topic[unused]  # [X]; every topic has a video (a main topic's first video)
    lo, hi = np.where(t < T, start[t], 0), start[t + 1]  # [X] range of candidate hosts in by_topic
    host = by_topic[lo + (rng.random(len(t)) * (hi - lo)).astype(np.int64)]  # [X]
    order = np.argsort(host, kind="stable")  # [X]
    host, unused = host[order], unused[order]
    extra = np.bincount(host, minlength=V)  # [V]
    tag_ptr = np.concatenate([[0], np.cumsum(num_tags + extra)])  # [V+1]
    tags = np.empty(tag_ptr[-1], dtype=np.int64)  # [sum k_v]
    tags[(tag_ptr[:-1, None] + np.arange(MAX_TAGS))[keep]] = picked[keep]
    rank = np.arange(len(host)) - np.searchsorted(host, host)  # [X] position among the host's extras
    tags[tag_ptr[host] + num_tags[host] + rank] = unused
    return Videos(user=user, topics=topics, mix=mix, tag_ptr=tag_ptr, tags=tags)


def _names(prefix: str, count: int, width: int) -> list[str]:
    width = max(width, len(str(count - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def tag_names(w: World) -> list[str]:
    """Hashtag names ``t<topic>_h<rank>`` in generator id order."""
    T = len(w.offset) - 2
    rank = np.arange(len(w.tag_topic)) - w.offset[w.tag_topic]  # [H]
    tw = max(2, len(str(T - 1)))
    hw = max(4, len(str(int(rank.max()))))
    return [f"t{t:0{tw}d}_h{r:0{hw}d}" if t < T else f"gen_h{r:0{hw}d}"
            for t, r in zip(w.tag_topic.tolist(), rank.tolist())]


def generator_names(p: Preset, w: World) -> dict:
    """The names written to ``posts.tsv`` of the users, hashtags and videos, each list in generator id order."""
    return {"user": _names("u", p.num_user, 4), "hashtag": tag_names(w), "video": _names("v", p.num_video, 6)}


def write_raw(p: Preset, w: World, vids: Videos, raw: Path, rng: np.random.Generator) -> dict:
    """Step 4 and the files ``prepare`` reads: ``posts.tsv`` and ``<modality>.npy`` [V, F_m] float32.

    Returns the names (in generator id order) of the users, hashtags and videos.
    """
    names = generator_names(p, w)
    tag_name = np.array(names["hashtag"], dtype=object)
    per_video = np.split(tag_name[vids.tags], vids.tag_ptr[1:-1])  # V arrays of names
    user_name = [names["user"][u] for u in vids.user.tolist()]
    with open(raw / "posts.tsv", "w", encoding="utf-8") as fh:
        fh.write("video\tuser\thashtags\n")
        fh.writelines(f"{v}\t{u}\t{' '.join(t)}\n" for v, u, t in zip(names["video"], user_name, per_video))

    T, V = p.num_topic, p.num_video
    proj = [rng.standard_normal((T, d)).astype(np.float32) for d in p.feature_dims]  # [T, F_m] each
    proj = [m / np.linalg.norm(m, axis=1, keepdims=True) for m in proj]
    # plain sequential writes after an .npy header: memory stays flat at any V
    files = [open(raw / f"{m}.npy", "wb") for m in MODALITIES]
    try:
        for fh, d in zip(files, p.feature_dims):
            np.lib.format.write_array_header_1_0(
                fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                     "shape": (V, d)})
        for lo in range(0, V, FEATURE_CHUNK):
            sl = slice(lo, min(lo + FEATURE_CHUNK, V))
            beta = np.zeros((sl.stop - lo, T + 1), dtype=np.float32)  # [B, T+1]; column T absorbs -1
            np.put_along_axis(beta, vids.topics[sl] % (T + 1), vids.mix[sl].astype(np.float32), axis=1)
            beta = beta[:, :T]  # [B, T] β_v
            for fh, pm, sigma in zip(files, proj, p.noise):
                z = beta + sigma * rng.standard_normal(beta.shape, dtype=np.float32)  # [B, T]
                x = z @ pm  # [B, F_m]
                x += p.feature_noise / np.sqrt(x.shape[1]) * rng.standard_normal(x.shape, dtype=np.float32)
                (x / np.linalg.norm(x, axis=1, keepdims=True)).tofile(fh)
    finally:
        for fh in files:
            fh.close()
    return names


def _pair_lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``values`` at ``query`` for sorted unique integer ``keys``, 0 where a query key is absent."""
    at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[at] == query, values[at], 0.0)


def reference_scorers(p: Preset, w: World, vids: Videos, gen_ids: dict, ds) -> dict:
    """Score functions (``evaluation.evaluate`` signature) of the reference rankers.

    ``gen_ids[kind]`` maps the dataset's local ids of that kind to generator ids.
    """
    H, T, lam, sig = p.num_hashtag, p.num_topic, p.personal_weight, p.generic_weight
    used = w.user_topic >= 0  # [U, M+1]
    slot_user = np.broadcast_to(np.arange(p.num_user)[:, None, None], w.personal.shape)  # [U, M+1, S]
    key = (slot_user * H + w.personal)[used].ravel()  # [Q] (user, hashtag) of the personal entries
    order = np.argsort(key)
    pers_key = key[order]  # [Q] sorted
    pers_w = np.broadcast_to(w.personal_w, w.personal.shape)[used].ravel()[order]  # [Q] π_{u,t(h)}(h)

    # block weights: (1 - σ) θ_u or (1 - σ) β_v on topics, σ on the generic block T; column T+1 absorbs -1
    slot_w = (1 - sig) * w.user_theta  # [U, M+1]
    slot_w[:, -1] = sig
    user_mix = np.zeros((p.num_user, T + 2))  # [U, T+2]
    np.put_along_axis(user_mix, w.user_topic % (T + 2), slot_w, axis=1)
    video_mix = np.zeros((p.num_video, T + 2))  # [V, T+2]
    np.put_along_axis(video_mix, vids.topics % (T + 2), (1 - sig) * vids.mix, axis=1)
    video_mix[:, T] = sig
    # P(h | t) marginalised over users: P(u | t) ∝ n_u × (weight of block t in u's videos)
    reach = w.num_videos[:, None] * slot_w  # [U, M+1]
    topic_reach = np.bincount(w.user_topic[used], weights=reach[used], minlength=T + 1)  # [T+1]
    pers_reach = np.bincount(w.personal[used].ravel(), minlength=H,
                             weights=(reach[..., None] * w.personal_w)[used].ravel())  # [H]
    tag_given_topic = lam * pers_reach / topic_reach[w.tag_topic] + (1 - lam) * w.tag_pop  # [H]

    train = ds.train.numpy()  # [R, 3] local (user, video, hashtag)
    pair, count = np.unique(train[:, 0] * ds.num_hashtag + train[:, 2], return_counts=True)  # [P], [P]
    count = count.astype(np.float64)
    glob = np.bincount(train[:, 2], minlength=ds.num_hashtag)  # [H] training uses
    tie_break = glob / (glob.max() + 1.0)  # [H] in [0, 1)

    def generator_score(kind):
        def score(users, videos, cand):  # [B], [B], [B, C] local ids -> [B, C] log-probabilities
            u = gen_ids["user"][users.numpy()][:, None]  # [B, 1]
            v = gen_ids["video"][videos.numpy()][:, None]  # [B, 1]
            h = gen_ids["hashtag"][cand.numpy()]  # [B, C]
            t = w.tag_topic[h]  # [B, C]
            if kind == "content_only":  # P(h | v)
                prob = video_mix[v, t] * tag_given_topic[h]
            else:  # P(h | u, t(h)) weighted by the video's (oracle) or the user's (user_only) block weights
                in_block = lam * _pair_lookup(pers_key, pers_w, u * H + h) + (1 - lam) * w.tag_pop[h]
                prob = (video_mix[v, t] if kind == "oracle" else user_mix[u, t]) * in_block
            return torch.from_numpy(np.log(np.maximum(prob, 1e-300)))
        return score

    def userpop(users, videos, cand):  # the user's training count of h, global count breaking ties
        n = _pair_lookup(pair, count, users.numpy()[:, None] * ds.num_hashtag + cand.numpy())  # [B, C]
        return torch.from_numpy(n + tie_break[cand.numpy()])

    # topic_counts: training rows counted per (user, hashtag) pair and topic, weighted by the video's β
    beta = video_mix[gen_ids["video"], :T] / (1 - sig)  # [V, T] β of every local video
    beta_read = read_topics(ds, beta)  # [V, T] the same, read from the features outside the training split
    row_pair = np.searchsorted(pair, train[:, 0] * ds.num_hashtag + train[:, 2])  # [R] row -> pair
    pair_topic = np.zeros((len(pair), T))  # [P, T] n(u, t, h)
    np.add.at(pair_topic, row_pair, beta[train[:, 1]])
    topic_tag = np.zeros((T, ds.num_hashtag))  # [T, H] n(t, h)
    np.add.at(topic_tag.T, train[:, 2], beta[train[:, 1]])
    topic_tag /= np.maximum(topic_tag.sum(axis=1, keepdims=True), 1e-12)
    generic = w.tag_topic[gen_ids["hashtag"]] == T  # [H]

    def counts_score(video_beta):  # topic_counts with each line's video mixture taken from video_beta [V, T]
        def score(users, videos, cand):
            key = users.numpy()[:, None] * ds.num_hashtag + cand.numpy()  # [B, C]
            at = np.minimum(np.searchsorted(pair, key), len(pair) - 1)
            found = pair[at] == key  # [B, C] pairs of the training split
            b = video_beta[videos.numpy()]  # [B, T]
            own = np.zeros(key.shape)
            own[found] = (pair_topic[at[found]] * np.broadcast_to(b[:, None], (*key.shape, T))[found]).sum(-1)
            c = cand.numpy()
            shares = np.take_along_axis(b @ topic_tag, c, axis=1)  # [B, C]
            mine = np.where(found & generic[c], count[at], 0.0)
            return torch.from_numpy(own + shares + mine + 1e-6 * tie_break[c])
        return score

    return {**{kind: generator_score(kind) for kind in ("oracle", "content_only", "user_only")},
            "userpop": userpop, "topic_counts": counts_score(beta), "topic_counts_read": counts_score(beta_read)}


def read_topics(ds, beta: np.ndarray, ridge: float = READ_RIDGE, power: float = READ_POWER) -> np.ndarray:
    """``[V, T]`` every video's topic mixture as ``topic_counts_read`` sees it: the true β for the videos of the
    training split, and for the others β read from the features. The reading is a ridge regression (centred,
    penalty ``ridge``) of β on the features of the training split's videos; a video's two largest read weights,
    clipped at 0 and raised to ``power``, are renormalised to sum to 1 (a video is about one or two topics).

    Shapes: beta [V, T] (local video order) → [V, T]
    """
    in_train = np.zeros(ds.num_video, dtype=bool)
    in_train[ds.train[:, 1].numpy()] = True  # [V]

    def chunks():  # (first video, [n, F] float64 features), the blocks read side by side
        for parts in zip(*(data_load.row_chunks(block) for block in ds.feature_blocks)):
            yield parts[0][0], np.concatenate([rows for _, rows in parts], axis=1).astype(np.float64)

    x_sum, gram, cross = 0.0, 0.0, 0.0  # one pass over the training videos: Σx, Σxxᵀ, Σxβᵀ
    for start, x in chunks():
        keep = in_train[start:start + len(x)]
        xt, yt = x[keep], beta[start:start + len(x)][keep]  # [n', F], [n', T]
        x_sum, gram, cross = x_sum + xt.sum(0), gram + xt.T @ xt, cross + xt.T @ yt
    n = int(in_train.sum())
    x_mean, y_mean = x_sum / n, beta[in_train].mean(0)  # [F], [T]
    gram = gram - n * np.outer(x_mean, x_mean)  # centred: Σ(x − x̄)(x − x̄)ᵀ
    cross = cross - n * np.outer(x_mean, y_mean)  # Σ(x − x̄)(β − β̄)ᵀ
    weights = np.linalg.solve(gram + ridge * np.eye(len(x_mean)), cross)  # [F, T]
    read = np.empty_like(beta)
    for start, x in chunks():
        read[start:start + len(x)] = (x - x_mean) @ weights + y_mean
    read = np.clip(read, 0.0, None) ** power
    read[read < np.sort(read, axis=1)[:, [-2]]] = 0.0  # the two largest weights of each video
    read /= np.maximum(read.sum(1, keepdims=True), 1e-12)
    return np.where(in_train[:, None], beta, read)


def reference_metrics(p: Preset, w: World, vids: Videos, names: dict, ds) -> dict:
    """Test Recall@10 and NDCG@10 of the reference rankers (SPEC §5 protocol, ``evaluation.evaluate``):
    ``{"test_recall@10": {ranker: value}, "test_ndcg@10": {ranker: value}}``."""
    metrics = {name: evaluation.evaluate(ds.test, fn, ks=(10,))
               for name, fn in reference_scorers(p, w, vids, _generator_ids(names, ds), ds).items()}
    return {f"test_{metric}": {name: round(m[metric], 4) for name, m in metrics.items()}
            for metric in ("recall@10", "ndcg@10")}


def _generator_ids(names: dict, ds) -> dict:
    """``{"user", "hashtag", "video"}``: ``[local]`` generator id of each local id of ``ds``, via ``names``."""
    gen_ids = {}
    for kind, loaded in (("user", ds.user_names), ("hashtag", ds.hashtag_names), ("video", ds.video_names)):
        index = {name: i for i, name in enumerate(names[kind])}
        missing = next((name for name in loaded if name not in index), None)
        if missing is not None:
            raise data_load.DataError(f"{ds.path}: {kind} {missing!r} is not one of the generator's names "
                                      "(expected a dataset written by make_data.py, unchanged)")
        gen_ids[kind] = np.array([index[name] for name in loaded], dtype=np.int64)  # [local] -> generator
    return gen_ids


def reference_scorer(ds, name: str):
    """The score function ``(users, videos, candidates) -> [B, C]`` of reference ranker ``name`` (one of
    :data:`REFERENCES`) on a dataset written by :func:`build`, for ``evaluation.evaluate`` or ``diagnose.py``.

    The generator's draws are made again from the seed and parameters its ``meta.json`` records (the same
    draws :func:`build` made), and the dataset's ids are mapped to the generator's through the names.
    """
    if name not in REFERENCES:
        raise ValueError(f"reference ranker: expected one of {', '.join(REFERENCES)}, got {name!r}")
    gen = ds.meta.get("generator")
    if gen is None:
        raise data_load.DataError(f"{ds.path}/meta.json: expected a dataset written by make_data.py (a "
                                  "'generator' record), got none")
    try:
        p = Preset(**{key: tuple(v) if isinstance(v, list) else v for key, v in gen["params"].items()})
        seed = int(gen["seed"])
    except (KeyError, TypeError, ValueError) as err:
        raise data_load.DataError(f"{ds.path}/meta.json: 'generator' record: expected the seed and parameters of "
                                  f"this version of make_data.py, got {err}") from None
    rng = np.random.default_rng(seed)
    world = sample_world(p, rng)
    vids = sample_videos(p, world, rng)
    gen_ids = _generator_ids(generator_names(p, world), ds)
    return reference_scorers(p, world, vids, gen_ids, ds)[name]


def build(preset: str, out, seed: int = 0, legacy: bool = False, overwrite: bool = False, scale: float = 1.0,
          feature_dims: tuple[int, int, int] | None = None, num_neg: int | None = None,
          references: bool = True, noise_scale: float = 1.0) -> Path:
    """Generate preset ``preset`` with ``seed`` into the project-format directory ``out``.

    Writes the raw files to a temporary folder beside ``out``, runs ``data_load.prepare`` on them (same
    seed), then records the generator's parameters and the reference rankers' test Recall@10 and NDCG@10
    in ``meta.json``. With ``legacy`` also writes the released layout into ``out/legacy``. ``scale``,
    ``feature_dims`` and ``num_neg`` change the preset's sizes (:func:`scaled`); ``references=False`` skips
    the reference rankers (their ``[V, T]`` topic matrices are the generator's largest at a large scale).
    ``noise_scale`` multiplies the feature noises σ_m and τ (0: noiseless features, the topic mixture itself
    seen through each modality's projection); every other draw, hence the users, videos, hashtags and split,
    stays the same.
    Returns ``out``.
    """
    if noise_scale < 0:
        raise ValueError(f"noise_scale: expected a value >= 0, got {noise_scale}")
    sizes, out = scaled(PRESETS[preset], scale, feature_dims, num_neg), Path(out)
    p = dataclasses.replace(sizes, noise=tuple(noise_scale * n for n in sizes.noise),
                            feature_noise=noise_scale * sizes.feature_noise)
    if out.exists() and not overwrite:
        raise data_load.DataError(f"{out}: expected a new output directory, got an existing one "
                                  "(pass --overwrite to replace it)")
    rng = np.random.default_rng(seed)
    world = sample_world(p, rng)
    vids = sample_videos(p, world, rng)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.raw-"))
    record = {"preset": preset, "seed": seed, "params": dataclasses.asdict(p)}
    if sizes != PRESETS[preset]:
        record["scale"] = scale
    if noise_scale != 1:
        record["noise_scale"] = noise_scale
    try:
        names = write_raw(p, world, vids, raw, rng)
        data_load.prepare(raw / "posts.tsv", [raw / f"{m}.npy" for m in MODALITIES], out, seed=seed,
                          num_neg=p.num_neg, source=f"make_data:{preset}", extra_meta={"generator": record},
                          overwrite=overwrite)
    finally:
        shutil.rmtree(raw)
    ds = data_load.load_dataset(out)
    if references:
        record.update(reference_metrics(p, world, vids, names, ds))
    data_load.write_json_atomic(out / "meta.json", {**ds.meta, "generator": record})
    if legacy:
        data_load.write_legacy(out, out / "legacy", overwrite=True)
    return out


def ensure(preset: str, root="data", seed: int = 0) -> Path:
    """``root/<preset>``, built on first use and reused while its ``meta.json`` records the same preset,
    seed and generating parameters (a stale or unfinished one is rebuilt in place)."""
    out = Path(root) / preset
    if out.exists():
        meta_path = out / "meta.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        gen = meta.get("generator")
        if gen is None:
            raise data_load.DataError(f"{meta_path}: expected a dataset written by make_data.py (a "
                                      "'generator' record), got none; not replacing it")
        wanted = json.loads(json.dumps(dataclasses.asdict(PRESETS[preset])))
        if (gen.get("preset"), gen.get("seed"), gen.get("params")) == (preset, seed, wanted) \
                and all(set(gen.get(key, ())) == set(REFERENCES) for key in REFERENCE_KEYS):
            return out
    return build(preset, out, seed=seed, overwrite=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate a synthetic micro-video hashtag dataset with planted personalized "
                    "structure (see the module docstring), split by data_load.prepare (SPEC §2.3).")
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS),
                        help="sizes: tiny (tests), small (demo), instagram / yfcc (paper scale, SPEC §2.1)")
    parser.add_argument("--out", default=None, help="output directory (default: data/<preset>, with -x<scale>, "
                        "-f<feature dim>, -n<negatives> when those change)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator and of the split")
    parser.add_argument("--format", choices=("project", "legacy"), default="project",
                        help="legacy: also write the released pickled layout (SPEC §2.2) into OUT/legacy")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the preset's users, hashtags, videos and topics by this factor")
    parser.add_argument("--feature_dims", default="", metavar="VIS,AC,TXT",
                        help="feature dimensions of the three modalities instead of the preset's")
    parser.add_argument("--num_neg", type=int, default=0, help="negatives per val/test line instead of the preset's")
    parser.add_argument("--noise_scale", type=float, default=1.0,
                        help="multiply the feature noises (0: noiseless features; the data are otherwise the same)")
    parser.add_argument("--no_references", action="store_true",
                        help="skip the reference rankers' test figures in meta.json (for large scales)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        dims = tuple(int(d) for d in args.feature_dims.split(",")) if args.feature_dims else None
        if dims is not None and (len(dims) != 3 or min(dims) < 1):
            raise ValueError
    except ValueError:
        print(f"error: --feature_dims: expected three positive integers VIS,AC,TXT, got {args.feature_dims!r}",
              file=sys.stderr)
        return 2
    name = args.preset + (f"-x{args.scale:g}" if args.scale != 1 else "") + (f"-f{sum(dims)}" if dims else "") \
        + (f"-n{args.num_neg}" if args.num_neg else "") \
        + (f"-noise{args.noise_scale:g}" if args.noise_scale != 1 else "")
    try:
        out = build(args.preset, args.out or Path("data") / name, seed=args.seed, legacy=args.format == "legacy",
                    overwrite=args.overwrite, scale=args.scale, feature_dims=dims, num_neg=args.num_neg or None,
                    references=not args.no_references, noise_scale=args.noise_scale)
    except ValueError as err:                       # DataError, or a Preset that the scale made impossible
        print(f"error: {err}", file=sys.stderr)
        return 2
    ds = data_load.load_dataset(out)
    print(data_load.describe(ds))
    print(f"built in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
