"""Tests of recommend.py: rankings of a trained model, given-hashtag marks, unseen users, every model,
one-line errors, the atomic --input TSV."""

import json
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

import recommend
import train
from model import Config

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAMES = next(f for f in fields(Config) if f.name == "model_name").metadata["choices"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tiny_dir, tmp_path_factory):
    """GCN-PHR trained 5 epochs on ``tiny``: a run directory (config.json, best.pt)."""
    out = tmp_path_factory.mktemp("run")
    cfg = Config(data_path=str(tiny_dir), dim_latent=16, num_epoch=5, weight_decay=0.0, l_r=0.01, num_workers=1)
    train.run(cfg, out, torch.device("cpu"), progress=False, log=lambda *a: None)
    torch.set_num_threads(1)                      # train.run sets the thread count from num_workers
    return out


@pytest.fixture(scope="module")
def rec(run_dir):
    return recommend.Recommender(*recommend.open_run(run_dir))


def _tags(ds, v: int) -> set[int]:
    return set(ds.video_tags[ds.video_tags_ptr[v]:ds.video_tags_ptr[v + 1]].tolist())


def _rank_all(rec, users, videos, k=10):
    tops, scores = zip(*rec.rank(users, videos, k))
    return torch.cat(tops), torch.cat(scores)


def _parse_tables(text: str) -> list[list[tuple[str, float, bool]]]:
    """(hashtag, score, marked) rows of every table printed by --user / --video."""
    tables = []
    for line in text.splitlines():
        if line.startswith("  rank"):
            tables.append([])
        elif tables and line.startswith("  ") and line.split()[0].isdigit():
            cells = line.split()
            tables[-1].append((cells[1], float(cells[2]), cells[-1] == "*"))
    return tables


def _save_features(path: Path, rows: np.ndarray) -> str:
    np.save(path, rows.astype(np.float32))
    return str(path)


# --------------------------------------------------------------------------------------------
# Rankings
# --------------------------------------------------------------------------------------------
def test_training_videos_get_their_hashtags_far_more_often_than_chance(rec):
    ds = rec.ds
    videos = torch.unique(ds.train[:, 1])                                              # training videos
    users = torch.zeros(ds.num_video, dtype=torch.long).index_put_((ds.train[:, 1],), ds.train[:, 0])[videos]
    top, scores = _rank_all(rec, users, videos)
    assert top.shape == (videos.numel(), 10) and (scores[:, :-1] >= scores[:, 1:]).all()
    hits = np.array([len(_tags(ds, v) & set(t)) for v, t in zip(videos.tolist(), top.tolist())])
    k = np.array([len(_tags(ds, v)) for v in videos.tolist()])
    chance = (10 * k / ds.num_hashtag).mean()           # expected hits of a uniformly random top-10
    assert hits.mean() > 4 * chance, (hits.mean(), chance)


def test_gcn_phr_scores_are_the_models_own(rec):
    ds = rec.ds
    users, videos = ds.test.users[:7], ds.test.videos[:7]
    cand = torch.arange(ds.num_hashtag).expand(7, -1)
    with torch.no_grad():
        assert torch.allclose(rec.score(users, videos, cand), rec.model.scorer()(users, videos, cand), atol=1e-5)


def test_a_new_video_ranks_like_the_same_video_in_the_dataset(run_dir, rec, tmp_path, capsys):
    ds = rec.ds
    v, u = int(ds.test.videos[0]), int(ds.test.users[0])
    feats = _save_features(tmp_path / "v.npy", ds.features()[v].numpy())                # one 1-D row
    assert recommend.main([str(run_dir), "--user", ds.user_names[u], "--features", feats]) == 0
    assert recommend.main([str(run_dir), "--video", ds.video_names[v]]) == 0
    new, old = _parse_tables(capsys.readouterr().out)
    assert [n for n, _, _ in new] == [n for n, _, _ in old] and len(new) == 10
    assert np.allclose([s for _, s, _ in new], [s for _, s, _ in old], atol=1e-3)


def test_video_marks_exactly_the_hashtags_its_user_gave_it(run_dir, rec, capsys):
    ds = rec.ds
    picks = [int(ds.train[0, 1]), int(ds.test.videos[1]), int(ds.val.videos[0])]
    assert recommend.main([str(run_dir), "--video", *[ds.video_names[v] for v in picks], "--topk", "20"]) == 0
    out = capsys.readouterr().out
    tables = _parse_tables(out)
    assert len(tables) == 3 and all(len(t) == 20 for t in tables)
    for v, table in zip(picks, tables):
        given = {ds.hashtag_names[h] for h in _tags(ds, v)}
        assert [marked for _, _, marked in table] == [name in given for name, _, _ in table]
    assert sum(marked for t in tables for _, _, marked in t) > 0
    owner = ds.test.users[1]
    assert f"video {ds.video_names[picks[1]]} of user {ds.user_names[owner]} (test split" in out


def test_unseen_user_gets_a_notice_and_the_average_user(run_dir, rec, tmp_path, capsys):
    ds = rec.ds
    rows = ds.features()[ds.test.videos[:2]]                                             # [2, F]
    feats = _save_features(tmp_path / "two.npy", rows.numpy())
    assert recommend.main([str(run_dir), "--user", "nobody", "--features", feats, "--topk", "5"]) == 0
    captured = capsys.readouterr()
    assert "notice: user 'nobody' is not among the 30 users this model was trained with" in captured.err
    assert recommend.FALLBACK["gcn_phr"] in captured.err
    tables = _parse_tables(captured.out)
    assert len(tables) == 2 and all(len(t) == 5 for t in tables)
    # the fallback: the mean propagated user vector with the video's own z_v
    with torch.no_grad():
        reps = rec.model.propagate()
        mean_user = reps.user.mean(0, keepdim=True).expand(2, -1)                        # [2, d]
        z = rec.model.video_repr()[ds.test.videos[:2]]                                   # [2, d]
        expect = rec.model.scoring(mean_user, z, reps.tag.expand(2, -1, -1)).topk(5, dim=1)
    for table, ids, vals in zip(tables, expect.indices.tolist(), expect.values.tolist()):
        assert [n for n, _, _ in table] == [ds.hashtag_names[h] for h in ids]
        assert np.allclose([s for _, s, _ in table], vals, atol=1e-3)


def _untrained_run(ds, tiny_dir, run: Path, name: str, **options) -> Config:
    """A run directory in ``run`` holding ``name`` with its initial weights (seed 0), on ``tiny``."""
    torch.manual_seed(0)
    cfg = Config(model_name=name, data_path=str(tiny_dir), dim_latent=8, baseline_size="small", **options)
    train.save_weights(train.build_model(cfg, ds), cfg, run / "best.pt", epoch=0)
    (run / "config.json").write_text(json.dumps({"data": str(tiny_dir)}))
    return cfg


EVERY_MODEL = [*(pytest.param(n, {}, id=n) for n in MODEL_NAMES),
               pytest.param("gcn_phr", {"graph": "homogeneous"}, id="gcn_phr-homogeneous")]


@pytest.mark.parametrize("name, ablation", EVERY_MODEL)
def test_every_model_ranks_known_and_unseen_users(tiny, tiny_dir, tmp_path, name, ablation):
    ds = tiny
    cfg = _untrained_run(ds, tiny_dir, tmp_path, name, **ablation)
    new = torch.randn(2, ds.feature_dim)
    rec = recommend.Recommender(*recommend.open_run(tmp_path), new_features=new)
    known, video = int(ds.test.users[0]), int(ds.test.videos[0])
    users = torch.tensor([known, rec.unseen, known, rec.unseen])
    videos = torch.tensor([video, video, ds.num_video, ds.num_video + 1])
    top, scores = _rank_all(rec, users, videos, k=ds.num_hashtag)                        # full rankings
    assert torch.isfinite(scores).all() and (torch.sort(top, dim=1).values == torch.arange(ds.num_hashtag)).all()
    reference = train.build_model(cfg, ds, features=torch.cat([ds.features(), new]))
    train.load_weights(reference, tmp_path / "best.pt")
    with torch.no_grad():
        own = reference.eval().scorer()(users[[0, 2]], videos[[0, 2]], top[[0, 2]])
    assert torch.allclose(scores[[0, 2]], own, atol=1e-5)                              # known users: the model
    count = torch.bincount(ds.train[:, 2], minlength=ds.num_hashtag).float()
    if name in ("pop", "userpop", "mf"):                                                 # unseen: popularity
        assert torch.equal(count[top[1]], count.sort(descending=True).values)
    if name in ("pop", "content"):                                                       # the user is not used
        assert torch.allclose(scores[1], scores[0], atol=1e-5)


@pytest.mark.parametrize("name, options", [*EVERY_MODEL, pytest.param(
    "gcn_phr", {"scoring_mode": "fully_con"}, id="gcn_phr-fully_con")])
def test_ranking_grouped_by_user_gives_the_per_line_scores(tiny, tiny_dir, tmp_path, name, options):
    ds = tiny
    _untrained_run(ds, tiny_dir, tmp_path, name, **options)
    rec = recommend.Recommender(*recommend.open_run(tmp_path), new_features=torch.randn(3, ds.feature_dim))
    a, b, c, unseen = *ds.test.users[[0, 1, 2]].tolist(), rec.unseen
    assert len({a, b, c}) == 3
    users = torch.tensor([a, unseen, b, a, c, b, unseen, a, a])                   # interleaved, repeated
    videos = torch.tensor([*ds.test.videos[:6].tolist(), ds.num_video, ds.num_video + 1, ds.num_video + 2])
    with torch.no_grad():
        per_line = rec.score(users, videos, torch.arange(ds.num_hashtag).expand(users.numel(), -1))   # [L, H]
        grouped = rec.score_all(users, videos)                                                        # [L, H]
    torch.testing.assert_close(grouped, per_line, atol=1e-5, rtol=1e-5)
    tops, scores = zip(*rec.rank(users, videos, k=5, batch_size=2))           # batches split users' lines
    assert [t.size(0) for t in tops] == [2, 2, 2, 2, 1]
    expect = per_line.topk(5, dim=1)
    torch.testing.assert_close(torch.cat(scores), expect.values, atol=1e-5, rtol=1e-5)
    chosen = per_line.gather(1, torch.cat(tops))                              # the chosen hashtags' scores
    torch.testing.assert_close(chosen, expect.values, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("users, batch_size, bounds", [
    ([0, 0, 1, 1, 1, 2], 2, [0, 2, 4, 6]),          # user 1 alone is longer than a batch: split
    ([0, 0, 1, 1, 1, 2], 3, [0, 2, 5, 6]),          # a batch ends where a user's lines end
    ([0, 1, 2, 3], 10, [0, 4]),
    ([5, 5, 5, 5, 5], 2, [0, 2, 4, 5]),
    ([], 4, [0]),
])
def test_user_batches_keep_a_users_lines_together(users, batch_size, bounds):
    assert recommend.user_batches(torch.tensor(users, dtype=torch.long), batch_size) == bounds


def test_fallback_is_documented_for_every_model_name():
    assert set(recommend.FALLBACK) == set(MODEL_NAMES)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_unknown_video_is_a_one_line_error_from_the_command_line(run_dir):
    proc = subprocess.run([sys.executable, str(ROOT / "recommend.py"), str(run_dir), "--video", "no_such_video"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: --video 'no_such_video': expected a micro-video")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def _posts(path: Path, lines: list[str], header="video\tuser\thashtags") -> str:
    path.write_text(header + "\n" + "".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("short_features", "expected 48 feature columns (visual 32 + acoustic 8 + textual 8), got 47"),
    ("block_widths", "expected 8 columns (feature block 'acoustic'), got 9"),
    ("rows", "expected 2 rows (one per input line, same order), got 3"),
    ("unknown_hashtag", "line 3: expected hashtags of the dataset's hashtag_list.txt, got unknown 'no_such_tag'"),
    ("unknown_video", "--video 'v_unknown': expected a micro-video"),
    ("no_features", "--user: expected --features"),
    ("bare_checkpoint", "expected --data_path"),
])
def test_bad_requests_are_one_line_errors(run_dir, rec, tmp_path, capsys, case, message):
    ds, run = rec.ds, str(run_dir)
    user = ds.user_names[0]
    good = _posts(tmp_path / "good.tsv", [f"a\t{user}", f"b\t{user}"], header="video\tuser")
    posts = _posts(tmp_path / "posts.tsv", [f"a\t{user}\t{ds.hashtag_names[0]}",
                                            f"b\t{user}\t{ds.hashtag_names[1]} no_such_tag"])
    feats = lambda n, d: _save_features(tmp_path / f"f{n}_{d}.npy", np.zeros((n, d)))
    bare = tmp_path / "ckpt" / "model.pt"
    bare.parent.mkdir()
    shutil.copy(run_dir / "best.pt", bare)
    argv = {
        "short_features": [run, "--user", user, "--features", feats(1, 47)],
        "block_widths": [run, "--user", user, "--features", feats(1, 32), feats(1, 9), feats(1, 8)],
        "rows": [run, "--input", good, "--output", str(tmp_path / "o.tsv"), "--features", feats(3, 48)],
        "unknown_hashtag": [run, "--input", posts, "--output", str(tmp_path / "o.tsv"), "--features", feats(2, 48)],
        "unknown_video": [run, "--video", ds.video_names[0], "v_unknown"],
        "no_features": [run, "--user", user],
        "bare_checkpoint": [str(bare), "--video", ds.video_names[0]],
    }[case]
    assert recommend.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.tsv").exists()


def test_bare_checkpoint_with_data_path_works(run_dir, rec, tmp_path, capsys):
    bare = tmp_path / "model.pt"
    shutil.copy(run_dir / "best.pt", bare)
    name = rec.ds.video_names[0]
    assert recommend.main([str(bare), "--data_path", str(rec.ds.path), "--video", name]) == 0
    assert recommend.main([str(run_dir), "--video", name]) == 0
    out = capsys.readouterr().out
    assert _parse_tables(out)[0] == _parse_tables(out)[1]


# --------------------------------------------------------------------------------------------
# --input
# --------------------------------------------------------------------------------------------
def _input_case(rec, tmp_path, header="video\tuser\thashtags"):
    ds = rec.ds
    lines = ds.test.videos[:5]                                                           # [5]
    users = [ds.user_names[u] for u in ds.test.users[:5].tolist()]
    users[3] = "someone_new"
    cells = [f"post{i}\t{u}" + (f"\t{' '.join(ds.hashtag_names[h] for h in _tags(ds, v))}" if "hashtags" in header
                                 else "") for i, (u, v) in enumerate(zip(users, lines.tolist()))]
    posts = _posts(tmp_path / "posts.tsv", cells, header)
    blocks = [_save_features(tmp_path / f"{n}.npy", np.asarray(b)[lines.numpy()])
              for n, b in zip(ds.feature_names, ds.feature_blocks)]                      # one file per block
    return posts, blocks, lines, users


@pytest.mark.parametrize("header", ["video\tuser\thashtags", "video\tuser"])
def test_input_writes_k_rows_per_line(run_dir, rec, tmp_path, capsys, header):
    ds = rec.ds
    posts, blocks, lines, users = _input_case(rec, tmp_path, header)
    out = tmp_path / "recs.tsv"
    argv = [str(run_dir), "--input", posts, "--features", *blocks, "--output", str(out), "--topk", "4",
            "--batch_size", "2", "--quiet"]
    assert recommend.main(argv) == 0
    captured = capsys.readouterr()
    assert "notice: 1 of 5 lines have a user (first: 'someone_new' on line 5) not among the 30 users" in captured.err
    assert f"wrote {out}: 20 rows" in captured.out
    rows = [r.split("\t") for r in out.read_text(encoding="utf-8").splitlines()]
    with_given = "hashtags" in header
    assert rows[0] == ["video", "user", "rank", "hashtag", "score"] + (["given"] if with_given else [])
    assert len(rows) == 1 + 5 * 4
    expect_top, expect_scores = _rank_all(rec, torch.tensor([rec.user_id(u) for u in users]), lines, k=4)
    for i in range(5):
        block = rows[1 + 4 * i: 5 + 4 * i]
        assert [r[0] for r in block] == [f"post{i}"] * 4 and [r[1] for r in block] == [users[i]] * 4
        assert [r[2] for r in block] == ["1", "2", "3", "4"]
        assert [r[3] for r in block] == [ds.hashtag_names[h] for h in expect_top[i].tolist()]
        assert np.allclose([float(r[4]) for r in block], expect_scores[i].numpy(), atol=1e-4)
        if with_given:
            given = _tags(ds, int(lines[i]))
            assert [r[5] for r in block] == [str(int(h in given)) for h in expect_top[i].tolist()]


def test_input_output_is_all_or_nothing(rec, tmp_path):
    ds = rec.ds
    posts, blocks, lines, users = _input_case(rec, tmp_path)
    out = tmp_path / "recs.tsv"
    out.write_text("previous results\n")
    parsed = recommend.read_posts(posts, {n: i for i, n in enumerate(ds.hashtag_names)})
    calls = []

    def failing(users, videos, cand):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("interrupted")
        return torch.zeros(cand.shape)

    every = torch.arange(ds.num_hashtag)
    score_all, rec.score_all = rec.score_all, lambda u, v: failing(u, v, every.expand(u.numel(), -1))
    try:                                                  # the second batch fails mid-file
        with pytest.raises(RuntimeError, match="interrupted"):
            recommend.write_recommendations(rec, parsed, torch.zeros(5, dtype=torch.long), lines, out, k=3,
                                            batch_size=2, progress=False)
    finally:
        rec.score_all = score_all
    assert len(calls) == 2 and out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_ranking(run_dir, rec):
    on_gpu = recommend.Recommender(*recommend.open_run(run_dir), device="cuda")
    users, videos = rec.ds.test.users, rec.ds.test.videos
    top_cpu, scores_cpu = _rank_all(rec, users, videos)
    top_gpu, scores_gpu = _rank_all(on_gpu, users, videos)
    assert torch.allclose(scores_cpu, scores_gpu, atol=1e-4)
