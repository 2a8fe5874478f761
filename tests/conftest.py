"""Shared fixtures: a tiny seeded ``posts.tsv`` + three feature files, and the dataset ``prepare`` builds."""

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import data_load

# Videos per user; SPEC §2.3 gives (train, val, test) = (1,0,1) (2,0,1) (4,0,1) (5,1,1) (10,1,2) (16,2,3).
VIDEOS_PER_USER = (2, 3, 5, 7, 13, 21)
NUM_TAGS = 24          # hashtag pool t00..t23; a video gets 1-4 distinct ones
FEATURE_DIMS = {"visual": 6, "acoustic": 4, "textual": 3}
NUM_NEG = 8


def make_posts(seed: int = 0):
    """Rows ``(video, user, [hashtags])`` with the users interleaved, and float32 blocks ``{name: [V, d]}``."""
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.arange(len(VIDEOS_PER_USER)), VIDEOS_PER_USER)   # [V]
    rng.shuffle(owner)
    rows = [(f"v{i:03d}", f"user{u}", [f"t{t:02d}" for t in rng.choice(NUM_TAGS, rng.integers(1, 5),
                                                                        replace=False)])
            for i, u in enumerate(owner)]
    feats = {name: rng.standard_normal((len(rows), d)).astype(np.float32) for name, d in FEATURE_DIMS.items()}
    return rows, feats


def write_posts(directory: Path, rows, feats: dict) -> tuple[Path, list[Path]]:
    """Write ``posts.tsv`` and one ``<name>.npy`` per block into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    posts = directory / "posts.tsv"
    posts.write_text("video\tuser\thashtags\n" + "".join(f"{v}\t{u}\t{' '.join(t)}\n" for v, u, t in rows),
                     encoding="utf-8")
    paths = []
    for name, block in feats.items():
        np.save(directory / f"{name}.npy", block)
        paths.append(directory / f"{name}.npy")
    return posts, paths


@pytest.fixture
def tiny_posts(tmp_path):
    """``(posts path, feature paths, rows, feats)`` of the tiny input, written under ``tmp_path/in``."""
    rows, feats = make_posts()
    posts, paths = write_posts(tmp_path / "in", rows, feats)
    return posts, paths, rows, feats


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The project-format dataset prepared (seed 0, ``NUM_NEG`` negatives) from the ``tiny_posts`` input.

    Shared by the whole session: read it, or copy it before changing anything.
    """
    root = tmp_path_factory.mktemp("tiny")
    posts, paths = write_posts(root / "in", *make_posts())
    return data_load.prepare(posts, paths, root / "data", seed=0, num_neg=NUM_NEG)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The synthetic ``tiny`` preset of make_data.py (seed 0), built once per test session."""
    import make_data

    return make_data.build("tiny", tmp_path_factory.mktemp("data") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """The loaded ``tiny`` dataset (shared: tests must not modify it)."""
    return data_load.load_dataset(tiny_dir)


def training_batch(ds, n=64, seed=0):
    """``(users, videos, pos, neg, rows)`` of ``n`` seeded training rows of ``ds`` with uniform negatives."""
    import torch

    import train

    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(ds.train), generator=gen)[:n]
    users, videos, pos = ds.train[rows].unbind(1)
    neg = train.NegativeSampler(ds.train, ds.num_hashtag, 0.0, gen).sample()[rows]
    return users, videos, pos, neg, rows


def run_many(commands: dict, timeout: float = 300) -> dict:
    """``{name: CompletedProcess}`` of the ``{name: argv}`` subprocesses, as many at once as there are cores
    (each start of Python with torch costs seconds; the tests that only check a refusal share them)."""
    root = Path(__file__).resolve().parents[1]
    with ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
        futures = {name: pool.submit(subprocess.run, argv, cwd=root, capture_output=True, text=True, timeout=timeout)
                   for name, argv in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def interrupt_at_epoch(monkeypatch, epoch: int) -> None:
    """Make ``train.run`` raise KeyboardInterrupt (as Ctrl-C would) when epoch ``epoch`` starts, after
    ``epoch − 1`` epochs finished; ``monkeypatch.undo()`` lifts it."""
    import train

    sample, calls = train.NegativeSampler.sample, []

    def interrupted(self):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return sample(self)

    monkeypatch.setattr(train.NegativeSampler, "sample", interrupted)
