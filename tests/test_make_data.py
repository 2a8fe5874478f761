"""Tests of make_data.py: the synthetic generator (SPEC §2) on the ``tiny`` preset."""

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

import data_load
import make_data

TINY = make_data.PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    """``tiny`` built with seed 0, with the legacy layout, and the seconds the build took."""
    start = time.perf_counter()
    out = make_data.build("tiny", tmp_path_factory.mktemp("seed0") / "tiny", seed=0, legacy=True)
    return out, time.perf_counter() - start


def _files(root):
    """Relative path -> bytes of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tiny_builds_in_seconds(tiny_build):
    _, seconds = tiny_build
    assert seconds < 10.0


def test_same_seed_gives_identical_files(tiny_build, tmp_path):
    out, _ = tiny_build
    again = make_data.build("tiny", tmp_path / "tiny", seed=0, legacy=True)
    first, second = _files(out), _files(again)
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []


def test_other_seed_gives_other_data(tiny_build, tmp_path):
    out, _ = tiny_build
    other = make_data.build("tiny", tmp_path / "tiny", seed=1)
    for name in ("train.npy", "test.npz", "video_hashtag.npz", "features_visual.npy"):
        assert (out / name).read_bytes() != (other / name).read_bytes(), name


def test_meta_records_preset_counts_and_generator(tiny_build):
    out, _ = tiny_build
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["num_user"], meta["num_hashtag"], meta["num_video"], meta["num_neg"]) == (
        TINY.num_user, TINY.num_hashtag, TINY.num_video, TINY.num_neg)
    assert [(f["name"], f["dim"]) for f in meta["features"]] == list(
        zip(make_data.MODALITIES, TINY.feature_dims))
    gen = meta["generator"]
    assert (gen["preset"], gen["seed"], meta["seed"]) == ("tiny", 0, 0)
    assert gen["params"] == json.loads(json.dumps(dataclasses.asdict(TINY)))
    for key in make_data.REFERENCE_KEYS:
        assert set(gen[key]) == set(make_data.REFERENCES), key


def test_dataset_structure(tiny_build):
    ds = data_load.load_dataset(tiny_build[0])
    per_video = np.diff(ds.video_tags_ptr.numpy())  # [V]
    assert per_video.min() >= 1
    assert 2.0 <= per_video.mean() <= 4.0
    assert np.array_equal(np.unique(ds.video_tags.numpy()), np.arange(TINY.num_hashtag))  # all used
    videos = np.concatenate([ds.train[:, 1].numpy(), ds.val.videos.numpy(), ds.test.videos.numpy()])
    users = np.concatenate([ds.train[:, 0].numpy(), ds.val.users.numpy(), ds.test.users.numpy()])
    _, first = np.unique(videos, return_index=True)
    assert np.bincount(users[first], minlength=TINY.num_user).min() >= make_data.MIN_VIDEOS
    assert len(first) == TINY.num_video


def test_features_are_finite_unit_rows_of_the_right_dims(tiny_build):
    ds = data_load.load_dataset(tiny_build[0])
    assert [b.shape for b in ds.feature_blocks] == [(TINY.num_video, d) for d in TINY.feature_dims]
    for block in ds.feature_blocks:
        block = np.asarray(block)
        assert block.dtype == np.float32 and np.isfinite(block).all()
        np.testing.assert_allclose(np.linalg.norm(block, axis=1), 1.0, rtol=1e-5)


def test_features_carry_the_topic(tiny_build):
    """Videos whose hashtags share a topic have closer textual features than videos that share none."""
    ds = data_load.load_dataset(tiny_build[0])
    names = np.array(ds.hashtag_names)
    topic = np.array([n.split("_")[0] for n in names])  # "t03", or "gen" for the generic block
    ptr, tags = ds.video_tags_ptr.numpy(), ds.video_tags.numpy()
    first_topic = np.array([next((t for t in topic[tags[ptr[v]:ptr[v + 1]]] if t != "gen"), "gen")
                            for v in range(ds.num_video)])
    text = np.asarray(ds.feature_blocks[2])
    sim = text @ text.T  # [V, V]
    same = first_topic[:, None] == first_topic[None, :]
    assert sim[same].mean() > sim[~same].mean() + 0.3


def test_oracle_beats_content_only_and_user_only(tiny_build):
    recall = json.loads((tiny_build[0] / "meta.json").read_text())["generator"]["test_recall@10"]
    assert recall["oracle"] >= 0.9
    assert recall["oracle"] > recall["content_only"] + 0.1
    assert recall["oracle"] > recall["user_only"] + 0.1


def _generated(out):
    """The dataset at ``out``, the generator's draws behind it (seed 0) and the local -> generator ids of its
    users, videos and hashtags (through the names written to posts.tsv)."""
    ds = data_load.load_dataset(out)
    rng = np.random.default_rng(0)
    world = make_data.sample_world(TINY, rng)
    vids = make_data.sample_videos(TINY, world, rng)
    tag_index = {n: i for i, n in enumerate(make_data.tag_names(world))}
    ids = {"user": np.array([int(n[1:]) for n in ds.user_names]),
           "video": np.array([int(n[1:]) for n in ds.video_names]),
           "hashtag": np.array([tag_index[n] for n in ds.hashtag_names])}
    return ds, world, vids, ids


def _loop_metrics(ds, line_scores) -> tuple[float, float]:
    """Test Recall@10 and NDCG@10 written as plain loops, an independent check of the vectorised code:
    ``line_scores(user, video, candidates)`` (local ids) gives one score per candidate. A positive's rank
    is 1 + the negatives scored at least as high + the positives scored higher or equal in an earlier column."""
    recalls, ndcgs = [], []
    for line in range(len(ds.test)):
        pos = ds.test.pos[ds.test.pos_ptr[line]:ds.test.pos_ptr[line + 1]].tolist()
        cand = ds.test.negatives[line].tolist() + pos
        scores = np.array(line_scores(int(ds.test.users[line]), int(ds.test.videos[line]), cand))
        neg, pos_scores = scores[:-len(pos)], scores[-len(pos):]
        ranks = [1 + (neg >= s).sum() + (pos_scores > s).sum() + (pos_scores[:i] == s).sum()
                 for i, s in enumerate(pos_scores)]
        recalls.append(np.mean(np.array(ranks) <= 10))
        dcg = sum(1 / np.log2(r + 1) for r in ranks if r <= 10)
        ndcgs.append(dcg / sum(1 / np.log2(r + 1) for r in range(1, min(len(pos), 10) + 1)))
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def _stored(out, ranker) -> tuple[float, float]:
    """The test Recall@10 and NDCG@10 of reference ``ranker`` in ``out/meta.json``."""
    gen = json.loads((out / "meta.json").read_text())["generator"]
    return gen["test_recall@10"][ranker], gen["test_ndcg@10"][ranker]


def test_reference_figures_match_a_direct_computation(tiny_build):
    """The stored oracle figures are the Recall@10 and NDCG@10 of log P(h | u, v) written out by hand here."""
    ds, world, vids, ids = _generated(tiny_build[0])
    lam, sig = TINY.personal_weight, TINY.generic_weight

    def oracle(user, video, cand):
        u, v = ids["user"][user], ids["video"][video]
        scores = []
        for h in ids["hashtag"][cand]:
            t = world.tag_topic[h]
            slot = list(world.user_topic[u]).index(t) if t in world.user_topic[u] else None
            pers = 0.0 if slot is None else world.personal_w[slot][world.personal[u, slot] == h].sum()
            in_block = lam * pers + (1 - lam) * world.tag_pop[h]
            weight = sig if t == TINY.num_topic else (1 - sig) * vids.mix[v][vids.topics[v] == t].sum()
            scores.append(weight * in_block)
        return scores

    assert _stored(tiny_build[0], "oracle") == pytest.approx(_loop_metrics(ds, oracle), abs=1e-3)


def _true_beta(vids, ids) -> np.ndarray:
    """``[V, T]`` the generator's topic mixture β of every local video, as a dense matrix."""
    beta = np.zeros((len(ids["video"]), TINY.num_topic))
    for v, g in enumerate(ids["video"]):
        for t, b in zip(vids.topics[g], vids.mix[g]):
            if t >= 0:
                beta[v, t] = b
    return beta


def _read_beta(ds, beta: np.ndarray) -> np.ndarray:
    """``topic_counts_read``'s mixtures written out on the whole feature matrix at once: ridge regression of the
    training videos' β on their features, the two largest read weights clipped, raised to the 4th power and
    renormalised; the training videos keep their β."""
    x = ds.features().numpy().astype(np.float64)                                 # [V, F]
    train = np.unique(ds.train[:, 1].numpy())
    x_mean, y_mean = x[train].mean(0), beta[train].mean(0)
    xc = x[train] - x_mean
    weights = np.linalg.solve(xc.T @ xc + np.eye(x.shape[1]), xc.T @ (beta[train] - y_mean))   # ridge 1
    read = np.clip((x - x_mean) @ weights + y_mean, 0, None) ** 4
    np.put_along_axis(read, np.argsort(-read, axis=1)[:, 2:], 0.0, axis=1)       # all but the two largest
    read /= read.sum(1, keepdims=True)
    read[train] = beta[train]
    return read


def test_read_topics_is_a_ridge_regression_on_the_features(tiny_build, monkeypatch):
    """``read_topics``, which reads the features in chunks, equals the regression written on the whole matrix;
    the training videos keep their true mixture, every read one is a distribution over at most two topics, and
    it finds most videos' main topic."""
    ds, _, vids, ids = _generated(tiny_build[0])
    monkeypatch.setattr(data_load, "_CHUNK", 64)                                 # several chunks on tiny
    beta = _true_beta(vids, ids)
    read = make_data.read_topics(ds, beta)
    assert read == pytest.approx(_read_beta(ds, beta), abs=1e-9)
    train = np.unique(ds.train[:, 1].numpy())
    assert np.array_equal(read[train], beta[train])
    assert read.sum(1) == pytest.approx(np.ones(len(read)))
    assert (read >= 0).all() and ((read > 0).sum(1) <= 2).all()
    others = np.setdiff1d(np.arange(len(read)), train)
    assert (read[others].argmax(1) == beta[others].argmax(1)).mean() > 0.7


def test_topic_counts_match_a_direct_computation(tiny_build):
    """The stored topic_counts figures are the Recall@10 and NDCG@10 of the counting rule of the docstring,
    written as loops; topic_counts_read's are the same rule with the mixtures read from the features."""
    ds, world, vids, ids = _generated(tiny_build[0])
    topic = world.tag_topic[ids["hashtag"]]                                      # [H] local hashtag -> block
    T = TINY.num_topic
    true_beta = _true_beta(vids, ids)
    line_beta = true_beta

    def beta(v):  # {topic: weight} of a local video, as the training rows count it
        return {t: float(b) for t, b in enumerate(true_beta[v]) if b > 0}

    user_topic_tag, topic_tag, user_tag, uses = {}, {}, {}, {}
    for u, v, h in ds.train.tolist():
        user_tag[u, h] = user_tag.get((u, h), 0) + 1
        uses[h] = uses.get(h, 0) + 1
        for t, b in beta(v).items():
            user_topic_tag[u, t, h] = user_topic_tag.get((u, t, h), 0.0) + b
            topic_tag[t, h] = topic_tag.get((t, h), 0.0) + b
    topic_total = {t: sum(c for (t2, _), c in topic_tag.items() if t2 == t) for t in range(T)}
    top = max(uses.values()) + 1.0

    def counts(u, v, cand):
        scores = []
        for h in cand:
            s = sum(b * (user_topic_tag.get((u, t, h), 0.0) + topic_tag.get((t, h), 0.0) / topic_total[t])
                    for t, b in enumerate(line_beta[v]) if b > 0)
            s += user_tag.get((u, h), 0) if topic[h] == T else 0.0
            scores.append(s + 1e-6 * uses.get(h, 0) / top)
        return scores

    assert _stored(tiny_build[0], "topic_counts") == pytest.approx(_loop_metrics(ds, counts), abs=1e-3)
    line_beta = _read_beta(ds, true_beta)
    assert _stored(tiny_build[0], "topic_counts_read") == pytest.approx(_loop_metrics(ds, counts), abs=1e-3)
    for key in make_data.REFERENCE_KEYS:
        stored = json.loads((tiny_build[0] / "meta.json").read_text())["generator"][key]
        assert stored["userpop"] < stored["topic_counts"] < stored["oracle"], key
        assert stored["content_only"] < stored["topic_counts_read"], key
        assert abs(stored["topic_counts_read"] - stored["topic_counts"]) < 0.05, key   # tiny's features are clear


def test_noise_scale_zero_keeps_the_data_and_removes_the_feature_noise(tiny_build, tmp_path):
    clean = make_data.build("tiny", tmp_path / "clean", seed=0, noise_scale=0.0, references=False)
    for name in ("train.npy", "val.npz", "test.npz", "video_hashtag.npz", "hashtag_list.txt"):
        assert (clean / name).read_bytes() == (tiny_build[0] / name).read_bytes(), name
    ds, _, vids, ids = _generated(clean)
    single = vids.topics[ids["video"], 1] < 0                                   # one-topic videos
    first = vids.topics[ids["video"], 0]
    for block in ds.feature_blocks:                                              # a function of the topic alone
        rows = np.asarray(block)[single]
        same = first[single][:, None] == first[single][None, :]
        np.testing.assert_allclose((rows @ rows.T)[same], 1.0, atol=1e-5)
    noisy = np.asarray(data_load.load_dataset(tiny_build[0]).feature_blocks[2])[single]
    assert (noisy @ noisy.T)[first[single][:, None] == first[single][None, :]].mean() < 0.9
    meta = json.loads((clean / "meta.json").read_text())["generator"]
    assert meta["noise_scale"] == 0.0 and meta["params"]["noise"] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="noise_scale"):
        make_data.build("tiny", tmp_path / "bad", noise_scale=-1.0)


def test_legacy_layout_reads_back_to_the_same_data(tiny_build):
    out, _ = tiny_build
    project = data_load.load_dataset(out)
    legacy = data_load.load_dataset(out / "legacy", allow_pickle=True)
    assert torch.equal(project.train, legacy.train)
    for a, b in ((project.val, legacy.val), (project.test, legacy.test)):
        for field in ("users", "videos", "negatives", "pos_ptr", "pos"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert torch.equal(project.video_tags_ptr, legacy.video_tags_ptr)
    assert torch.equal(project.video_tags, legacy.video_tags)
    assert torch.equal(project.features(), legacy.features())
    assert (project.user_names, project.hashtag_names, project.video_names) == (
        legacy.user_names, legacy.hashtag_names, legacy.video_names)


def test_ensure_builds_once_then_reuses(tmp_path, monkeypatch):
    out = make_data.ensure("tiny", root=tmp_path, seed=3)
    assert out == tmp_path / "tiny"
    stamp = (out / "meta.json").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("ensure rebuilt a dataset it should have reused")

    monkeypatch.setattr(make_data, "build", no_rebuild)
    assert make_data.ensure("tiny", root=tmp_path, seed=3) == out
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    make_data.ensure("tiny", root=tmp_path, seed=4)  # another seed: rebuilt in place
    assert json.loads((out / "meta.json").read_text())["generator"]["seed"] == 4


def test_ensure_rebuilds_a_stale_dataset(tmp_path):
    out = make_data.ensure("tiny", root=tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    meta["generator"]["params"]["personal_weight"] = 0.5  # made by another version of the generator
    (out / "meta.json").write_text(json.dumps(meta))
    make_data.ensure("tiny", root=tmp_path)
    assert json.loads((out / "meta.json").read_text())["generator"]["params"]["personal_weight"] == (
        TINY.personal_weight)
    meta = json.loads((out / "meta.json").read_text())
    del meta["generator"]["test_recall@10"]["topic_counts"]  # written before that reference existed
    (out / "meta.json").write_text(json.dumps(meta))
    make_data.ensure("tiny", root=tmp_path)
    assert set(json.loads((out / "meta.json").read_text())["generator"]["test_recall@10"]) == set(make_data.REFERENCES)
    meta = json.loads((out / "meta.json").read_text())
    del meta["generator"]["test_ndcg@10"]  # written before the NDCG@10 figures were recorded
    (out / "meta.json").write_text(json.dumps(meta))
    make_data.ensure("tiny", root=tmp_path)
    assert set(json.loads((out / "meta.json").read_text())["generator"]["test_ndcg@10"]) == set(make_data.REFERENCES)


@pytest.mark.parametrize("meta", [None, {"source": "prepare"}])
def test_ensure_refuses_to_replace_a_foreign_directory(tmp_path, meta):
    (tmp_path / "tiny").mkdir()
    if meta is not None:
        (tmp_path / "tiny" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(data_load.DataError, match="generator"):
        make_data.ensure("tiny", root=tmp_path)
    assert (tmp_path / "tiny").is_dir()


def test_build_refuses_an_existing_directory_without_overwrite(tiny_build):
    with pytest.raises(data_load.DataError, match="existing"):
        make_data.build("tiny", tiny_build[0], seed=0)


def test_preset_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="num_video"):
        dataclasses.replace(TINY, num_video=TINY.num_user * make_data.MIN_VIDEOS - 1)
    with pytest.raises(ValueError, match="hashtags per block"):
        dataclasses.replace(TINY, num_hashtag=TINY.num_topic * 3)


def test_cli(tmp_path, capsys):
    assert make_data.main(["--preset", "tiny", "--out", str(tmp_path / "d"), "--seed", "2"]) == 0
    assert "users 30" in capsys.readouterr().out
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["generator"]["seed"] == 2
