"""Tests of data_load.py (SPEC §2): id offsets, the pair graph, the seeded split of ``prepare``, the
legacy round trip, the pickle opt-in, and one malformed fixture per validation rule."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NUM_NEG, VIDEOS_PER_USER, run_many, write_posts

import data_load
import features
from data_load import DataError, IdSpace, build_pair_graph, load_dataset, prepare

REPO = Path(__file__).resolve().parents[1]
V = sum(VIDEOS_PER_USER)   # videos of the tiny dataset


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "data_load.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], proc.stderr


def raises_at(path, text: str):
    """``pytest.raises`` for a DataError whose one-line message starts with ``"{path}: {text}"``."""
    return pytest.raises(DataError, match="^" + re.escape(f"{path}: {text}") + "[^\n]*$")


def read_npz(path) -> dict:
    with np.load(path) as npz:
        return dict(npz)


def update_npz(path, **arrays) -> None:
    np.savez(path, **{**read_npz(path), **arrays})


def read_meta(d: Path) -> dict:
    return json.loads((d / "meta.json").read_text())


def update_meta(d: Path, **items) -> None:
    (d / "meta.json").write_text(json.dumps({**read_meta(d), **items}))


def leftovers(out: Path) -> list:
    """``out`` itself and any temporary sibling a failed write could have left."""
    return [p for p in out.parent.iterdir() if p.name == out.name or p.name.startswith(f".{out.name}.tmp-")]


def assert_same_data(a: data_load.Dataset, b: data_load.Dataset) -> None:
    assert (a.num_user, a.num_hashtag, a.num_video, a.num_neg) == (b.num_user, b.num_hashtag, b.num_video,
                                                                  b.num_neg)
    assert torch.equal(a.train, b.train)
    for name in ("val", "test"):
        sa, sb = getattr(a, name), getattr(b, name)
        for key in ("users", "videos", "negatives", "pos_ptr", "pos"):
            assert torch.equal(getattr(sa, key), getattr(sb, key)), (name, key)
    assert torch.equal(a.video_tags_ptr, b.video_tags_ptr) and torch.equal(a.video_tags, b.video_tags)
    assert torch.equal(a.features(), b.features())
    assert a.feature_names == b.feature_names
    assert (a.user_names, a.hashtag_names, a.video_names) == (b.user_names, b.hashtag_names, b.video_names)


class Evil:
    """Unpickling this creates the directory ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def plant_pickle(path: Path, marker: Path) -> None:
    arr = np.empty(1, dtype=object)
    arr[0] = Evil(marker)
    np.save(path, arr, allow_pickle=True)


# --------------------------------------------------------------------------------------------
# IdSpace and the pair graph
# --------------------------------------------------------------------------------------------
def test_id_space_offsets_and_round_trip():
    ids = IdSpace(num_user=3, num_hashtag=4, num_video=5)
    assert [ids.offset(k) for k in ("user", "hashtag", "video")] == [0, 3, 7]
    assert [ids.count(k) for k in ("user", "hashtag", "video")] == [3, 4, 5]
    np.testing.assert_array_equal(ids.to_global("video", np.array([0, 4])), [7, 11])
    np.testing.assert_array_equal(ids.to_local("hashtag", np.array([3, 6])), [0, 3])
    local = torch.tensor([0, 2])
    for kind in ("user", "hashtag", "video"):
        assert torch.equal(ids.to_local(kind, ids.to_global(kind, local)), local)
    assert torch.equal(ids.to_global("hashtag", local), torch.tensor([3, 5]))


def test_id_space_check_global_names_the_row():
    ids = IdSpace(num_user=3, num_hashtag=4, num_video=5)
    ids.check_global("hashtag", np.array([3, 6]), "f.npy")
    with raises_at("f.npy", "row 2: expected a hashtag id in [3, 7), got 7"):
        ids.check_global("hashtag", np.array([3, 4, 7]), "f.npy")
    with raises_at("f.npy", "row 1: expected a negative hashtag id in [3, 7), got 2"):
        ids.check_global("hashtag", np.array([[3, 4], [5, 2]]), "f.npy", "negative")
    with raises_at("f.npy", "row 0: expected a video id in [7, 12), got 12"):
        ids.check_global("video", np.array([12]), "f.npy")


# Training rows (user, video, hashtag), local ids; U = 3 (user 1 has none), H = 3, V = 5.
HAND_ROWS = [(0, 1, 2), (0, 0, 2), (0, 0, 0), (2, 3, 1), (2, 4, 0), (2, 3, 0)]
# Pairs by (user, hashtag): p0 = (0, 0) {v0: row 2}, p1 = (0, 2) {v0: row 1, v1: row 0},
# p2 = (2, 0) {v3: row 5, v4: row 4}, p3 = (2, 1) {v3: row 3}.
HAND_GRAPH = {
    "pair_user": [0, 0, 2, 2], "pair_hashtag": [0, 2, 0, 1], "user_ptr": [0, 2, 2, 4],
    "tag_perm": [0, 2, 3, 1], "tag_ptr": [0, 2, 3, 4],
    "pv_ptr": [0, 1, 3, 5, 6], "pv_video": [0, 0, 1, 3, 4, 3], "pv_row": [2, 1, 0, 5, 4, 3],
    "row_pair": [1, 1, 0, 3, 2, 2],
}


def test_build_pair_graph_by_hand():
    g = build_pair_graph(torch.tensor(HAND_ROWS), num_user=3, num_hashtag=3, num_video=5)
    for name, expected in HAND_GRAPH.items():
        got = getattr(g, name)
        assert got.dtype == torch.int64, name
        assert got.tolist() == expected, name
    assert (g.num_pairs, g.num_user, g.num_hashtag, g.num_video) == (4, 3, 3, 5)
    assert g.to("cpu").pv_row.tolist() == HAND_GRAPH["pv_row"]


def test_build_pair_graph_ignores_row_order():
    rows = torch.tensor(HAND_ROWS)
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    g = build_pair_graph(rows[perm], num_user=3, num_hashtag=3, num_video=5)
    for name in ("pair_user", "pair_hashtag", "user_ptr", "tag_perm", "tag_ptr", "pv_ptr", "pv_video"):
        assert getattr(g, name).tolist() == HAND_GRAPH[name], name
    # Edges point at the same (user, video, hashtag) rows, wherever those rows now are.
    assert torch.equal(rows[perm][g.pv_row], rows[torch.tensor(HAND_GRAPH["pv_row"])])
    assert g.row_pair.tolist() == [HAND_GRAPH["row_pair"][i] for i in perm.tolist()]


def test_pair_graph_of_a_dataset_matches_its_rows(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    g, train = ds.graph, ds.train
    assert torch.equal(g.pair_user[g.row_pair], train[:, 0])
    assert torch.equal(g.pair_hashtag[g.row_pair], train[:, 2])
    assert sorted(g.pv_row.tolist()) == list(range(len(train)))
    assert torch.equal(train[g.pv_row, 1], g.pv_video)


# --------------------------------------------------------------------------------------------
# prepare: the seeded split of SPEC §2.3
# --------------------------------------------------------------------------------------------
def test_prepare_is_reproducible(tiny_posts, tmp_path):
    posts, paths, _, _ = tiny_posts
    outs = [prepare(posts, paths, tmp_path / f"out{i}", seed=s, num_neg=NUM_NEG)
            for i, s in enumerate((7, 7, 8))]
    files = [sorted(p.name for p in out.iterdir()) for out in outs]
    assert files[0] == files[1] == files[2]
    assert all((outs[0] / f).read_bytes() == (outs[1] / f).read_bytes() for f in files[0])
    assert (outs[0] / "test.npz").read_bytes() != (outs[2] / "test.npz").read_bytes()
    train_videos = [set(load_dataset(out).train[:, 1].tolist()) for out in (outs[0], outs[2])]
    assert train_videos[0] != train_videos[1]
    assert read_meta(outs[0])["seed"] == 7 and read_meta(outs[2])["seed"] == 8


def test_prepare_split_follows_the_protocol_per_user(tiny_posts, tiny_dataset):
    _, _, rows, _ = tiny_posts
    ds = load_dataset(tiny_dataset)
    train_v = {u: set() for u in range(ds.num_user)}
    for u, v, _ in ds.train.tolist():
        train_v[u].add(v)
    for u in range(ds.num_user):
        n = sum(1 for r in rows if r[1] == ds.user_names[u])
        n_train = int(0.8 * n)
        n_val = int(0.5 * (n - n_train))
        assert len(train_v[u]) == n_train
        assert int((ds.val.users == u).sum()) == n_val
        assert int((ds.test.users == u).sum()) == n - n_train - n_val
    assert sorted(VIDEOS_PER_USER) == sorted(
        sum(1 for r in rows if r[1] == name) for name in ds.user_names)
    # Every video is in exactly one split.
    held = ds.val.videos.tolist() + ds.test.videos.tolist()
    all_train = set().union(*train_v.values())
    assert len(held) == len(set(held)) and not all_train & set(held)
    assert all_train | set(held) == set(range(ds.num_video))


def test_prepare_keeps_all_hashtags_of_a_video_together(tiny_posts, tiny_dataset):
    _, _, rows, _ = tiny_posts
    ds = load_dataset(tiny_dataset)
    tags_of = [[ds.hashtag_names[h] for h in ds.video_tags[ds.video_tags_ptr[v]:ds.video_tags_ptr[v + 1]]]
               for v in range(ds.num_video)]
    assert tags_of == [r[2] for r in rows]
    train_tags = {}
    for u, v, h in ds.train.tolist():
        assert ds.user_names[u] == rows[v][1]
        train_tags.setdefault(v, set()).add(ds.hashtag_names[h])
    assert all(train_tags[v] == set(rows[v][2]) for v in train_tags)
    for split in (ds.val, ds.test):
        for i, (u, v) in enumerate(zip(split.users.tolist(), split.videos.tolist())):
            assert ds.user_names[u] == rows[v][1]
            assert [ds.hashtag_names[h] for h in split.pos[split.pos_ptr[i]:split.pos_ptr[i + 1]]] == rows[v][2]


def test_prepare_negatives_are_distinct_non_hashtags_of_the_video(tiny_posts, tiny_dataset):
    _, _, rows, _ = tiny_posts
    ds = load_dataset(tiny_dataset)
    assert ds.num_neg == NUM_NEG == read_meta(tiny_dataset)["num_neg"]
    for split in (ds.val, ds.test):
        assert split.negatives.shape == (len(split), NUM_NEG)
        for v, neg in zip(split.videos.tolist(), split.negatives.tolist()):
            assert len(set(neg)) == NUM_NEG
            assert all(0 <= h < ds.num_hashtag for h in neg)
            assert not {ds.hashtag_names[h] for h in neg} & set(rows[v][2])


def test_prepare_preserves_names_and_features(tiny_posts, tiny_dataset):
    _, _, rows, feats = tiny_posts
    ds = load_dataset(tiny_dataset)
    assert ds.video_names == [r[0] for r in rows]
    assert ds.user_names == list(dict.fromkeys(r[1] for r in rows))
    assert ds.hashtag_names == list(dict.fromkeys(t for r in rows for t in r[2]))
    assert ds.feature_names == list(feats)
    for block, expected in zip(ds.feature_blocks, feats.values()):
        assert isinstance(block, np.memmap) and block.dtype == np.float32
        np.testing.assert_array_equal(block, expected)
    full = ds.features()
    assert full.dtype == torch.float32 and full.is_contiguous()
    assert torch.equal(full, torch.from_numpy(np.concatenate(list(feats.values()), axis=1)))
    meta = read_meta(tiny_dataset)
    assert meta["format_version"] == data_load.FORMAT_VERSION and meta["source"] == "prepare"
    assert [(f["name"], f["dim"]) for f in meta["features"]] == [(n, b.shape[1]) for n, b in feats.items()]
    assert (meta["num_user"], meta["num_hashtag"], meta["num_video"]) == (ds.num_user, ds.num_hashtag, len(rows))


def test_prepare_records_extra_meta(tiny_posts, tmp_path):
    posts, paths, _, _ = tiny_posts
    out = prepare(posts, paths, tmp_path / "out", seed=1, num_neg=NUM_NEG, source="make_data",
                  extra_meta={"generator": {"preset": "tiny"}})
    meta = load_dataset(out).meta
    assert meta["source"] == "make_data" and meta["generator"] == {"preset": "tiny"}


# --------------------------------------------------------------------------------------------
# legacy layout: round trip, opt-in, malicious pickle
# --------------------------------------------------------------------------------------------
def test_legacy_round_trip(tiny_dataset, tmp_path):
    legacy = data_load.write_legacy(tiny_dataset, tmp_path / "legacy")
    with pytest.raises(ValueError):
        np.load(legacy / "train.npy")                      # really a pickle, as released
    raw = np.load(legacy / "val.npy", allow_pickle=True)
    src = load_dataset(tiny_dataset)
    u, v = src.ids.to_global("user", src.val.users[0]), src.ids.to_global("video", src.val.videos[0])
    assert raw[0][:2] == [int(u), int(v)] and len(raw[0]) == 2 + NUM_NEG + int(src.val.pos_ptr[1])
    assert sorted(p.name for p in legacy.iterdir()) == sorted(
        ["train.npy", "val.npy", "test.npy", "video_hashtag.npy", "user_list.txt", "hashtag_list.txt",
         "video_list.txt", "FeatureVideo_normal.npy", "FeatureAudio_avg_normal.npy", "FeatureText_normal.npy"])
    assert_same_data(load_dataset(legacy, allow_pickle=True), src)
    out = data_load.convert(legacy, tmp_path / "converted", allow_pickle=True)
    assert_same_data(load_dataset(out), src)
    assert read_meta(out)["source"].startswith("convert:")


def test_legacy_needs_the_opt_in(tiny_dataset, tmp_path):
    legacy = data_load.write_legacy(tiny_dataset, tmp_path / "legacy")
    with pytest.raises(DataError, match=r"--allow_pickle.*convert") as info:
        load_dataset(legacy)
    assert str(legacy / "train.npy") in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="--allow_pickle"):
        data_load.convert(legacy, tmp_path / "out")
    assert not leftovers(tmp_path / "out")


def test_cli_inspect_legacy_without_opt_in_is_one_line(tiny_dataset, tmp_path):
    legacy = data_load.write_legacy(tiny_dataset, tmp_path / "legacy")
    assert_one_line_error(run_cli("inspect", legacy), "--allow_pickle")


def test_malicious_pickle_never_runs_without_opt_in(tiny_dataset, tmp_path, capsys):
    legacy = data_load.write_legacy(tiny_dataset, tmp_path / "legacy")
    marker = tmp_path / "pwned"
    plant_pickle(legacy / "train.npy", marker)
    with pytest.raises(DataError, match="--allow_pickle"):
        load_dataset(legacy)
    with pytest.raises(DataError, match="--allow_pickle"):
        data_load.convert(legacy, tmp_path / "out")
    assert data_load.main(["inspect", str(legacy)]) == 2
    assert "--allow_pickle" in capsys.readouterr().err
    # A pickle where the project format expects plain arrays is refused, never loaded.
    project = tmp_path / "project"
    shutil.copytree(tiny_dataset, project)
    plant_pickle(project / "train.npy", marker)
    with raises_at(project / "train.npy", "expected a plain numeric array, got a pickled object array"):
        load_dataset(project)
    assert not marker.exists()
    # Control: with the opt-in the payload does run, so the checks above could have failed.
    with pytest.raises(DataError, match=re.escape(f"{legacy / 'train.npy'}: row 0: expected ((user, video)")):
        load_dataset(legacy, allow_pickle=True)
    assert marker.exists()


def test_write_legacy_needs_three_feature_blocks(tiny_posts, tmp_path):
    posts, paths, _, _ = tiny_posts
    out = prepare(posts, paths[:2], tmp_path / "two", seed=0, num_neg=NUM_NEG)
    with pytest.raises(DataError, match="expected three feature blocks"):
        data_load.write_legacy(out, tmp_path / "legacy")


def _legacy_rows(d: Path, name: str) -> np.ndarray:
    return np.load(d / name, allow_pickle=True)


def _save_rows(d: Path, name: str, rows) -> None:
    arr = np.empty(len(rows), dtype=object)
    arr[:] = list(rows)
    np.save(d / name, arr, allow_pickle=True)


def test_legacy_reader_validates_rows(tiny_dataset, tmp_path):
    legacy = data_load.write_legacy(tiny_dataset, tmp_path / "legacy")
    ds = load_dataset(tiny_dataset)

    def broken(name):
        d = tmp_path / name
        shutil.copytree(legacy, d)
        return d

    d = broken("train_row")
    rows = list(_legacy_rows(d, "train.npy"))
    rows[2] = (1, 2, 3)
    _save_rows(d, "train.npy", rows)
    with raises_at(d / "train.npy", "row 2: expected ((user, video), hashtag), got (1, 2, 3)"):
        load_dataset(d, allow_pickle=True)

    d = broken("val_positives")
    rows = list(_legacy_rows(d, "val.npy"))
    rows[1] = rows[1][:-1] + [rows[1][2]]                  # last positive replaced by a negative
    _save_rows(d, "val.npy", rows)
    with raises_at(d / "val.npy", "row 1: expected the video's"):
        load_dataset(d, allow_pickle=True)

    d = broken("test_negative")
    rows = list(_legacy_rows(d, "test.npy"))
    rows[3] = rows[3][:2] + [0] + rows[3][3:]              # a user id among the negatives
    _save_rows(d, "test.npy", rows)
    with raises_at(d / "test.npy", f"row 3: expected a negative hashtag id in [{ds.num_user}, "):
        load_dataset(d, allow_pickle=True)

    d = broken("features")
    block = np.load(d / "FeatureAudio_avg_normal.npy")
    block[5, 0] = np.nan
    np.save(d / "FeatureAudio_avg_normal.npy", block)
    with raises_at(d / "FeatureAudio_avg_normal.npy", "row 5: expected finite feature values, got NaN or inf"):
        load_dataset(d, allow_pickle=True)


# --------------------------------------------------------------------------------------------
# load-time validation: one malformed copy of a good dataset per rule
# --------------------------------------------------------------------------------------------
MALFORMED = {}


def malformed(fn):
    """Register ``fn(d, ids) -> (file, expected message after "{d/file}: ")`` that breaks the copy ``d``."""
    MALFORMED[fn.__name__] = fn
    return fn


def _edit_npy(d, name, fn):
    arr = np.load(d / name)
    np.save(d / name, fn(arr))


def _set(arr, index, value):
    arr[index] = value
    return arr


def _hid(ids):
    return f"[{ids.offset('hashtag')}, {ids.offset('video')})"


@malformed
def train_user_out_of_range(d, ids):
    _edit_npy(d, "train.npy", lambda t: _set(t, (3, 0), ids.num_user))
    return "train.npy", f"row 3: expected a user id in [0, {ids.num_user}), got {ids.num_user}"


@malformed
def train_video_out_of_range(d, ids):
    _edit_npy(d, "train.npy", lambda t: _set(t, (5, 1), 0))
    lo = ids.offset("video")
    return "train.npy", f"row 5: expected a video id in [{lo}, {lo + ids.num_video}), got 0"


@malformed
def train_hashtag_out_of_range(d, ids):
    _edit_npy(d, "train.npy", lambda t: _set(t, (2, 2), ids.offset("video")))
    return "train.npy", f"row 2: expected a hashtag id in {_hid(ids)}, got {ids.offset('video')}"


@malformed
def train_duplicate_row(d, ids):
    t = np.load(d / "train.npy")
    np.save(d / "train.npy", np.concatenate([t, t[4:5]]))
    return "train.npy", f"row {len(t)}: expected unique (user, video, hashtag) training rows, got a repeat of row 4"


@malformed
def train_float(d, ids):
    _edit_npy(d, "train.npy", lambda t: t.astype(np.float64))
    return "train.npy", "expected an integer array, got float64"


@malformed
def train_two_columns(d, ids):
    _edit_npy(d, "train.npy", lambda t: t[:, :2])
    return "train.npy", "expected a non-empty [R, 3] array"


@malformed
def val_user_out_of_range(d, ids):
    users = read_npz(d / "val.npz")["users"]
    update_npz(d / "val.npz", users=_set(users, 1, ids.offset("hashtag")))
    return "val.npz", f"row 1: expected a user id in [0, {ids.num_user}), got {ids.offset('hashtag')}"


@malformed
def split_test_user_negative_id(d, ids):
    update_npz(d / "test.npz", users=_set(read_npz(d / "test.npz")["users"], 2, -1))
    return "test.npz", f"row 2: expected a user id in [0, {ids.num_user}), got -1"


@malformed
def split_test_video_out_of_range(d, ids):
    update_npz(d / "test.npz", videos=_set(read_npz(d / "test.npz")["videos"], 0, ids.num_user))
    return "test.npz", f"row 0: expected a video id in [{ids.offset('video')}, "


@malformed
def val_negative_out_of_range(d, ids):
    bad = ids.offset("video") + ids.num_video
    update_npz(d / "val.npz", negatives=_set(read_npz(d / "val.npz")["negatives"], (1, 3), bad))
    return "val.npz", f"row 1: expected a negative hashtag id in {_hid(ids)}, got {bad}"


@malformed
def split_test_positive_out_of_range(d, ids):
    s = read_npz(d / "test.npz")
    update_npz(d / "test.npz", pos=_set(s["pos"], s["pos_ptr"][2], 0))
    return "test.npz", f"row 2: expected positive hashtag ids in {_hid(ids)}, got 0"


@malformed
def split_test_line_without_positive(d, ids):
    s = read_npz(d / "test.npz")
    ptr, k1 = s["pos_ptr"], s["pos_ptr"][2] - s["pos_ptr"][1]
    pos = np.delete(s["pos"], np.arange(ptr[1], ptr[2]))
    ptr = np.concatenate([ptr[:2], ptr[2:] - k1])
    update_npz(d / "test.npz", pos=pos, pos_ptr=ptr)
    return "test.npz", "row 1: expected at least one positive hashtag, got none"


@malformed
def val_wrong_number_of_negatives(d, ids):
    update_npz(d / "val.npz", negatives=read_npz(d / "val.npz")["negatives"][:, :-1])
    return "val.npz", f"row 0: expected exactly {NUM_NEG} negatives per line, got {NUM_NEG - 1}"


@malformed
def val_negative_is_positive(d, ids):
    s = read_npz(d / "val.npz")
    h = s["pos"][s["pos_ptr"][2]]
    update_npz(d / "val.npz", negatives=_set(s["negatives"], (2, 5), h))
    return "val.npz", f"row 2: expected negatives that are not positives of the same line, got hashtag {h} in both"


@malformed
def split_test_repeated_negative(d, ids):
    neg = read_npz(d / "test.npz")["negatives"]
    update_npz(d / "test.npz", negatives=_set(neg, (1, 4), neg[1, 0]))
    return "test.npz", "row 1: expected distinct negatives on a line, got a repeated negative"


@malformed
def split_test_duplicated_line(d, ids):
    s = read_npz(d / "test.npz")
    k0 = s["pos_ptr"][1]
    update_npz(d / "test.npz", users=np.append(s["users"], s["users"][0]),
               videos=np.append(s["videos"], s["videos"][0]),
               negatives=np.concatenate([s["negatives"], s["negatives"][:1]]),
               pos_ptr=np.append(s["pos_ptr"], s["pos_ptr"][-1] + k0), pos=np.append(s["pos"], s["pos"][:k0]))
    lines = len(s["users"])
    return "test.npz", f"row {lines}: expected one line per video (duplicated line), got video {s['videos'][0]} again"


@malformed
def val_video_in_training(d, ids):
    v = np.load(d / "train.npy")[0, 1]
    update_npz(d / "val.npz", videos=_set(read_npz(d / "val.npz")["videos"], 0, v))
    return "val.npz", f"row 0: expected a video that is not in the training split, got video {v}"


@malformed
def split_test_video_in_val(d, ids):
    v = read_npz(d / "val.npz")["videos"][1]
    update_npz(d / "test.npz", videos=_set(read_npz(d / "test.npz")["videos"], 3, v))
    return "test.npz", f"row 3: expected a video not also in the val split, got video {v}"


@malformed
def split_test_user_without_training_rows(d, ids):
    u = (d / "user_list.txt").read_text().splitlines().index("user0")   # 2 videos: 1 train, 0 val, 1 test
    t = np.load(d / "train.npy")
    np.save(d / "train.npy", t[t[:, 0] != u])
    row = int(np.flatnonzero(read_npz(d / "test.npz")["users"] == u)[0])
    return "test.npz", (f"row {row}: expected a user with training videos (test users are seen in training), "
                        f"got user {u}")


@malformed
def val_users_two_dimensional(d, ids):
    update_npz(d / "val.npz", users=read_npz(d / "val.npz")["users"][:, None])
    return "val.npz", "expected users [L], videos [L], negatives [L, N] and pos [sum k], got users ("


@malformed
def val_empty_split(d, ids):
    np.savez(d / "val.npz", users=np.zeros(0, np.int64), videos=np.zeros(0, np.int64),
             negatives=np.zeros((0, NUM_NEG), np.int64), pos_ptr=np.zeros(1, np.int64), pos=np.zeros(0, np.int64))
    return "val.npz", "expected at least one line, got an empty split"


@malformed
def split_test_pos_ptr_inconsistent(d, ids):
    s = read_npz(d / "test.npz")
    update_npz(d / "test.npz", pos_ptr=_set(s["pos_ptr"], -1, s["pos_ptr"][-1] + 1))
    return "test.npz", f"expected pos_ptr of length {len(s['users']) + 1} from 0 to {len(s['pos'])}"


@malformed
def val_float_negatives(d, ids):
    update_npz(d / "val.npz", negatives=read_npz(d / "val.npz")["negatives"].astype(np.float64))
    return "val.npz", "expected integer array 'negatives', got float64"


@malformed
def split_test_missing_array(d, ids):
    s = read_npz(d / "test.npz")
    del s["pos"]
    np.savez(d / "test.npz", **s)
    return "test.npz", "expected arrays ['users', 'videos', 'negatives', 'pos_ptr', 'pos'], got ['pos'] missing"


@malformed
def video_hashtag_out_of_range(d, ids):
    update_npz(d / "video_hashtag.npz", idx=_set(read_npz(d / "video_hashtag.npz")["idx"], 0, 1))
    return "video_hashtag.npz", "row 0: expected hashtag ids, got 1"


@malformed
def video_hashtag_ptr_decreasing(d, ids):
    ptr = read_npz(d / "video_hashtag.npz")["ptr"]
    update_npz(d / "video_hashtag.npz", ptr=_set(ptr, 2, ptr[1] - 1))
    return "video_hashtag.npz", "row 1: expected a non-decreasing ptr (CSR), got a negative count"


@malformed
def video_hashtag_wrong_count(d, ids):
    update_npz(d / "video_hashtag.npz", ptr=read_npz(d / "video_hashtag.npz")["ptr"][:-1])
    return "video_hashtag.npz", f"expected one hashtag list per video ({ids.num_video}), got {ids.num_video - 1}"


@malformed
def features_wrong_rows(d, ids):
    _edit_npy(d, "features_visual.npy", lambda f: f[:-1])
    return "features_visual.npy", (f"expected {ids.num_video} rows (one per video, in video order), "
                                   f"got {ids.num_video - 1} rows")


@malformed
def features_nan(d, ids):
    _edit_npy(d, "features_acoustic.npy", lambda f: _set(f, (4, 1), np.nan))
    return "features_acoustic.npy", "row 4: expected finite feature values, got NaN or inf"


@malformed
def features_inf(d, ids):
    _edit_npy(d, "features_textual.npy", lambda f: _set(f, (ids.num_video - 1, 0), -np.inf))
    return "features_textual.npy", f"row {ids.num_video - 1}: expected finite feature values, got NaN or inf"


@malformed
def features_one_dimensional(d, ids):
    _edit_npy(d, "features_textual.npy", np.ravel)
    return "features_textual.npy", "expected a 2-D float matrix, got 1-D float32"


@malformed
def features_integer(d, ids):
    _edit_npy(d, "features_visual.npy", lambda f: f.astype(np.int32))
    return "features_visual.npy", "expected a 2-D float matrix, got 2-D int32"


@malformed
def features_wrong_dim(d, ids):
    _edit_npy(d, "features_visual.npy", lambda f: np.concatenate([f, f[:, :1]], axis=1))
    return "features_visual.npy", "expected 6 columns (meta.json), got 7"


@malformed
def train_empty_file(d, ids):
    (d / "train.npy").write_bytes(b"")
    return "train.npy", "expected a readable .npy file, got EOFError"


@malformed
def train_truncated(d, ids):
    data = (d / "train.npy").read_bytes()
    (d / "train.npy").write_bytes(data[:-16])
    return "train.npy", "expected a readable .npy file, got Failed to read all data"


@malformed
def features_truncated(d, ids):
    data = (d / "features_visual.npy").read_bytes()
    (d / "features_visual.npy").write_bytes(data[:-16])
    return "features_visual.npy", "expected a readable .npy file, got "


@malformed
def features_truncated_header(d, ids):
    data = (d / "features_acoustic.npy").read_bytes()
    (d / "features_acoustic.npy").write_bytes(data[:20])
    return "features_acoustic.npy", "expected a readable .npy file, got "


@malformed
def val_truncated_npz(d, ids):
    data = (d / "val.npz").read_bytes()
    (d / "val.npz").write_bytes(data[: len(data) // 2])
    return "val.npz", "expected a .npz (zip) archive, got another kind of file, or a truncated one"


@malformed
def split_test_npz_empty_file(d, ids):
    (d / "test.npz").write_bytes(b"")
    return "test.npz", "expected a .npz (zip) archive"


@malformed
def split_test_npz_is_a_npy(d, ids):
    with open(d / "test.npz", "wb") as fh:
        np.save(fh, np.arange(3))
    return "test.npz", "expected a .npz (zip) archive"


@malformed
def meta_not_json(d, ids):
    (d / "meta.json").write_text('{"format_version": 1,')
    return "meta.json", "expected valid JSON, got "


@malformed
def meta_not_an_object(d, ids):
    (d / "meta.json").write_text("[1, 2]")
    return "meta.json", "expected a JSON object, got list"


@malformed
def meta_missing_key(d, ids):
    meta = read_meta(d)
    del meta["num_neg"]
    (d / "meta.json").write_text(json.dumps(meta))
    return "meta.json", "expected keys ['format_version', 'num_user', 'num_hashtag', 'num_video', 'num_neg', " \
                        "'features'], got ['num_neg'] missing"


@malformed
def meta_wrong_format_version(d, ids):
    update_meta(d, format_version=2)
    return "meta.json", f"expected format_version {data_load.FORMAT_VERSION}, got 2"


@malformed
def meta_bad_count(d, ids):
    update_meta(d, num_video="50")
    return "meta.json", "expected non-negative integers ['num_user', 'num_hashtag', 'num_video', 'num_neg']"


@malformed
def meta_bad_features(d, ids):
    update_meta(d, features=[{"name": "visual"}])
    return "meta.json", 'expected features: a list of {"name", "file", "dim"}, got [{"name": "visual"}]'


@malformed
def meta_wrong_num_neg(d, ids):
    update_meta(d, num_neg=NUM_NEG + 1)
    return "val.npz", f"row 0: expected exactly {NUM_NEG + 1} negatives per line, got {NUM_NEG}"


@malformed
def hashtag_names_short(d, ids):
    names = (d / "hashtag_list.txt").read_text().splitlines()
    (d / "hashtag_list.txt").write_text("".join(f"{n}\n" for n in names[:-1]))
    return "hashtag_list.txt", f"expected {ids.num_hashtag} hashtag names, got {ids.num_hashtag - 1}"


@malformed
def video_names_long(d, ids):
    with open(d / "video_list.txt", "a") as fh:
        fh.write("extra\n")
    return "video_list.txt", f"expected {ids.num_video} video names, got {ids.num_video + 1}"


@malformed
def user_names_not_utf8(d, ids):
    (d / "user_list.txt").write_bytes(b"a\nb\n\xff\xfe\n")
    return "user_list.txt", "row 2: expected UTF-8 text, got undecodable bytes"


@malformed
def hashtag_names_repeated(d, ids):
    names = (d / "hashtag_list.txt").read_text().splitlines()
    names[5] = names[2]
    (d / "hashtag_list.txt").write_text("".join(f"{n}\n" for n in names))
    return "hashtag_list.txt", f"row 5: expected distinct hashtag names, got {names[2]!r} again (row 2)"


@malformed
def meta_count_is_a_boolean(d, ids):
    update_meta(d, num_user=True)
    return "meta.json", "expected non-negative integers ['num_user', 'num_hashtag', 'num_video', 'num_neg'], got [True"


@malformed
def meta_feature_file_outside_the_dataset(d, ids):
    update_meta(d, features=[{"name": "visual", "file": "../../features_visual.npy", "dim": 6}])
    return "meta.json", "expected features[0]: a name, a file name inside the dataset directory and a positive " \
                        "integer dim, got {"


@malformed
def meta_feature_dim_not_an_integer(d, ids):
    specs = read_meta(d)["features"]
    specs[1]["dim"] = "4"
    update_meta(d, features=specs)
    return "meta.json", "expected features[1]: a name, a file name inside the dataset directory"


@malformed
def meta_feature_file_null(d, ids):
    specs = read_meta(d)["features"]
    specs[0]["file"] = None
    update_meta(d, features=specs)
    return "meta.json", "expected features[0]: "


@malformed
def meta_no_feature_blocks(d, ids):
    update_meta(d, features=[])
    return "meta.json", "expected at least one feature block, got none"


def _video_with_tags(d, ids, at_least: int) -> int:
    """Local id of the first training video with at least ``at_least`` hashtags."""
    ptr = read_npz(d / "video_hashtag.npz")["ptr"]
    train_v = set(ids.to_local("video", np.load(d / "train.npy")[:, 1]).tolist())
    return next(v for v in range(ids.num_video) if ptr[v + 1] - ptr[v] >= at_least and v in train_v)


@malformed
def train_video_with_two_users(d, ids):
    t = np.load(d / "train.npy")
    v = ids.offset("video") + _video_with_tags(d, ids, 2)
    r0, r1 = np.flatnonzero(t[:, 1] == v)[:2]
    u0 = t[r0, 0]
    t[r1, 0] = (u0 + 1) % ids.num_user
    np.save(d / "train.npy", t)
    return "train.npy", (f"row {r1}: expected one user per video, got video {v} with user {t[r1, 0]} here and "
                         f"user {u0} on row {r0}")


@malformed
def train_hashtag_not_on_its_video(d, ids):
    t = np.load(d / "train.npy")
    on_video = set(t[t[:, 1] == t[0, 1], 2].tolist())
    h = next(h for h in range(ids.offset("hashtag"), ids.offset("video")) if h not in on_video)
    t[0, 2] = h
    np.save(d / "train.npy", t)
    return "train.npy", (f"row 0: expected a hashtag of the row's video (as listed in video_hashtag.npz), "
                         f"got hashtag {h} on video {t[0, 1]}")


@malformed
def video_hashtag_repeated(d, ids):
    vt = read_npz(d / "video_hashtag.npz")
    v = _video_with_tags(d, ids, 2)
    vt["idx"][vt["ptr"][v] + 1] = vt["idx"][vt["ptr"][v]]
    np.savez(d / "video_hashtag.npz", **vt)
    h = vt["idx"][vt["ptr"][v]]
    return "video_hashtag.npz", f"row {v}: expected distinct hashtags per video, got hashtag {h} twice"


@malformed
def video_hashtag_two_dimensional(d, ids):
    vt = read_npz(d / "video_hashtag.npz")
    np.savez(d / "video_hashtag.npz", ptr=vt["ptr"], idx=vt["idx"][:, None])
    return "video_hashtag.npz", f"expected a 1-D ptr and a 1-D idx (CSR), got ptr ({ids.num_video + 1},), idx ("


@malformed
def val_pos_ptr_scalar(d, ids):
    update_npz(d / "val.npz", pos_ptr=np.int64(0))
    return "val.npz", "expected pos_ptr of length "


@malformed
def val_repeated_positive(d, ids):
    s = read_npz(d / "val.npz")
    line = int(np.flatnonzero(np.diff(s["pos_ptr"]) >= 2)[0])
    s["pos"][s["pos_ptr"][line] + 1] = s["pos"][s["pos_ptr"][line]]
    np.savez(d / "val.npz", **s)
    return "val.npz", f"row {line}: expected distinct positive hashtags on a line, got hashtag " \
                      f"{s['pos'][s['pos_ptr'][line]]} twice"


@malformed
def split_test_positive_not_on_its_video(d, ids):
    s = read_npz(d / "test.npz")
    taken = set(s["pos"][: s["pos_ptr"][1]].tolist()) | set(s["negatives"][0].tolist())
    h = next(h for h in range(ids.offset("hashtag"), ids.offset("video")) if h not in taken)
    s["pos"][0] = h
    np.savez(d / "test.npz", **s)
    return "test.npz", (f"row 0: expected the hashtags of video {s['videos'][0]} in video_hashtag.npz as positives, "
                        f"got {s['pos'][: s['pos_ptr'][1]].tolist()}")


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_dataset(name, tiny_dataset, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(tiny_dataset, d)
    ids = load_dataset(d).ids
    file, text = MALFORMED[name](d, ids)
    with raises_at(d / file, text):
        load_dataset(d)


@pytest.mark.parametrize("file", ["meta.json", "train.npy", "val.npz", "test.npz", "video_hashtag.npz",
                                  "features_acoustic.npy", "user_list.txt", "hashtag_list.txt", "video_list.txt"])
def test_missing_file(file, tiny_dataset, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(tiny_dataset, d)
    (d / file).unlink()
    with raises_at(d / file, "expected an existing file"):
        load_dataset(d)


def test_missing_directory(tmp_path):
    with raises_at(tmp_path / "nope", "expected a dataset directory, got no such directory"):
        load_dataset(tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# train.py on malformed data: exit code, one line naming the file, no traceback, no run directory
# --------------------------------------------------------------------------------------------
def _train_npy_missing(d, ids):
    (d / "train.npy").unlink()
    return "train.npy", "expected an existing file, got it is missing"


def _train_npy_pickled(d, ids):
    plant_pickle(d / "train.npy", d.parent / f"{d.name}-pwned")
    return "train.npy", "expected a plain numeric array, got a pickled object array"


TRAIN_CLI_CASES = {"train_npy_missing": _train_npy_missing, "train_npy_pickled": _train_npy_pickled,
                   **{name: MALFORMED[name] for name in (
                       "train_empty_file", "features_truncated", "train_float", "train_hashtag_out_of_range",
                       "features_nan", "features_wrong_rows", "val_negative_is_positive",
                       "split_test_line_without_positive", "split_test_duplicated_line")}}


@pytest.fixture(scope="module")
def train_cli_on_malformed(tiny_dataset, tmp_path_factory) -> dict:
    """``{case: (process, its --out, the expected start of its one stderr line)}``: ``python train.py`` on a
    copy of the tiny dataset broken by each of ``TRAIN_CLI_CASES``, the processes run side by side."""
    root = tmp_path_factory.mktemp("train_cli")
    ids = load_dataset(tiny_dataset).ids
    commands, expected = {}, {}
    for name, edit in TRAIN_CLI_CASES.items():
        d = root / name
        shutil.copytree(tiny_dataset, d)
        file, text = edit(d, ids)
        expected[name] = f"error: {d / file}: {text}"
        commands[name] = [sys.executable, str(REPO / "train.py"), "--data_path", str(d), "--out",
                          str(root / f"{name}-run"), "--num_epoch=1", "--quiet"]
    procs = run_many(commands)
    return {name: (procs[name], root / f"{name}-run", expected[name]) for name in commands}


@pytest.mark.parametrize("name", list(TRAIN_CLI_CASES))
def test_train_cli_refuses_malformed_data(name, train_cli_on_malformed):
    proc, out, expected = train_cli_on_malformed[name]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
    assert not out.exists()                                       # refused before the run directory
    assert not (out.parent / f"{name}-pwned").exists()            # the planted pickle never ran


# --------------------------------------------------------------------------------------------
# prepare: input errors, refused outputs, nothing half-written
# --------------------------------------------------------------------------------------------
def _text(rows) -> str:
    return "video\tuser\thashtags\n" + "".join(f"{v}\t{u}\t{' '.join(t)}\n" for v, u, t in rows)


def _line(rows, i: int, line: str) -> str:
    lines = _text(rows).splitlines(keepends=True)
    lines[i + 1] = line
    return "".join(lines)


# name -> (posts.tsv text from the tiny rows, expected message after "posts.tsv: ")
BAD_POSTS = {
    "bad_header": (lambda r: _text(r).replace("hashtags", "tags", 1),
                   "row 1: expected the header 'video<TAB>user<TAB>hashtags', got 'video\\tuser\\ttags'"),
    "empty_file": (lambda r: "", "row 1: expected the header 'video<TAB>user<TAB>hashtags', got an empty file"),
    "header_only": (lambda r: "video\tuser\thashtags\n", "expected at least one micro-video line, got only the header"),
    "two_fields": (lambda r: _line(r, 3, "v003\tuser1\n"),
                   "row 5: expected 3 tab-separated fields (video, user, hashtags), got 2"),
    "four_fields": (lambda r: _line(r, 3, "v003\tuser1\tt01\tt02\n"),
                    "row 5: expected 3 tab-separated fields (video, user, hashtags), got 4"),
    "blank_line": (lambda r: _line(r, 7, "\n"),
                   "row 9: expected 3 tab-separated fields (video, user, hashtags), got 1"),
    "no_hashtags": (lambda r: _line(r, 3, "v003\tuser1\t\n"), "row 5: expected at least one hashtag, got none"),
    "blank_hashtags": (lambda r: _line(r, 3, "v003\tuser1\t   \n"), "row 5: expected at least one hashtag, got none"),
    "empty_video_id": (lambda r: _line(r, 3, "\tuser1\tt01\n"), "row 5: expected non-empty video and user ids"),
    "repeated_hashtag": (lambda r: _line(r, 3, "v003\tuser1\tt01 t02 t01\n"),
                         "row 5: expected distinct hashtags on a line, got t01 t02 t01"),
    "duplicate_video": (lambda r: _line(r, 10, f"v002\t{r[10][1]}\tt01\n"),
                        "row 12: expected one line per video, got video 'v002' again (line 4)"),
    "single_video_user": (lambda r: _text(r) + "v999\tsolo\tt01\n",
                          f"row {V + 2}: expected at least 2 videos per user (user 'solo' has 1"),
}


@pytest.mark.parametrize("name", list(BAD_POSTS))
def test_prepare_rejects_bad_posts(name, tiny_posts, tmp_path):
    posts, paths, rows, _ = tiny_posts
    text, expected = BAD_POSTS[name]
    posts.write_text(text(rows), encoding="utf-8")
    with raises_at(posts, expected):
        prepare(posts, paths, tmp_path / "out", seed=0, num_neg=NUM_NEG)
    assert not leftovers(tmp_path / "out")


def test_prepare_rejects_non_utf8_with_its_line(tiny_posts, tmp_path):
    posts, paths, rows, _ = tiny_posts
    many = [(f"x{i}", f"u{i % 50}", ["t01"]) for i in range(400)]   # > 8 KiB before the bad byte
    data = _text(rows + many).encode() + b"bad\t\xffuser\tt01\n"
    posts.write_bytes(data)
    with raises_at(posts, f"row {len(rows) + len(many) + 2}: expected UTF-8 text, got undecodable bytes"):
        prepare(posts, paths, tmp_path / "out", seed=0, num_neg=NUM_NEG)
    assert not leftovers(tmp_path / "out")


def test_prepare_missing_posts(tiny_posts, tmp_path):
    _, paths, _, _ = tiny_posts
    with raises_at(tmp_path / "none.tsv", "expected an existing file, got it is missing"):
        prepare(tmp_path / "none.tsv", paths, tmp_path / "out", seed=0, num_neg=NUM_NEG)


def test_prepare_needs_enough_hashtags_for_the_negatives(tiny_posts, tmp_path):
    posts, paths, rows, _ = tiny_posts
    num_h = len({t for r in rows for t in r[2]})
    max_k = max(len(r[2]) for r in rows)
    out = prepare(posts, paths, tmp_path / "edge", seed=0, num_neg=num_h - max_k)   # just enough
    assert load_dataset(out).num_neg == num_h - max_k
    n = num_h - max_k + 1
    with raises_at(posts, f"expected at least {n} + {max_k} hashtags to draw {n} negatives per line from "
                          f"(lower --num_neg), got {num_h} hashtags"):
        prepare(posts, paths, tmp_path / "out", seed=0, num_neg=n)
    assert not leftovers(tmp_path / "out")


@pytest.mark.parametrize("num_neg,seed", [(0, 0), (-3, 0), (NUM_NEG, -1)])
def test_prepare_rejects_bad_arguments(num_neg, seed, tiny_posts, tmp_path):
    posts, paths, _, _ = tiny_posts
    with pytest.raises(DataError, match=f"^prepare: expected num_neg >= 1 and seed >= 0, got num_neg {num_neg}"):
        prepare(posts, paths, tmp_path / "out", seed=seed, num_neg=num_neg)


# name -> (edit of the feature blocks {name: [V, d]}, file whose name the message starts with, expected text)
BAD_FEATURES = {
    "fewer_rows": (lambda f: {**f, "acoustic": f["acoustic"][:-1]}, "acoustic.npy",
                   f"expected {V} rows, one per line of posts.tsv in the same order, got {V - 1} rows"),
    "more_rows": (lambda f: {**f, "visual": np.concatenate([f["visual"], f["visual"][:1]])}, "visual.npy",
                  f"expected {V} rows, one per line of posts.tsv in the same order, got {V + 1} rows"),
    "nan": (lambda f: {**f, "textual": _set(f["textual"].copy(), (9, 2), np.nan)}, "textual.npy",
            "row 9: expected finite feature values, got NaN or inf"),
    "inf": (lambda f: {**f, "visual": _set(f["visual"].copy(), (0, 0), np.inf)}, "visual.npy",
            "row 0: expected finite feature values, got NaN or inf"),
    "float32_overflow": (lambda f: {**f, "visual": _set(f["visual"].astype(np.float64), (3, 1), 1e300)}, "visual.npy",
                         "row 3: expected finite feature values, got NaN or inf"),
    "one_dimensional": (lambda f: {**f, "visual": f["visual"][:, 0]}, "visual.npy",
                        "expected a 2-D float matrix, got 1-D float32"),
    "integer": (lambda f: {**f, "textual": f["textual"].astype(np.int64)}, "textual.npy",
                "expected a 2-D float matrix, got 2-D int64"),
}


@pytest.mark.parametrize("name", list(BAD_FEATURES))
def test_prepare_rejects_bad_features(name, tiny_posts, tmp_path):
    posts, _, rows, feats = tiny_posts
    edit, file, expected = BAD_FEATURES[name]
    assert len(rows) == V
    _, paths = write_posts(tmp_path / "bad", rows, edit(feats))
    with raises_at(tmp_path / "bad" / file, expected):
        prepare(posts, paths, tmp_path / "out", seed=0, num_neg=NUM_NEG)
    assert not leftovers(tmp_path / "out")


def test_prepare_stores_float64_features_as_float32(tiny_posts, tmp_path):
    posts, _, rows, feats = tiny_posts
    wide = {name: block.astype(np.float64) / 3 for name, block in feats.items()}
    _, paths = write_posts(tmp_path / "f64", rows, wide)
    ds = load_dataset(prepare(posts, paths, tmp_path / "out", seed=0, num_neg=NUM_NEG))
    for block, expected in zip(ds.feature_blocks, wide.values()):
        assert block.dtype == np.float32
        np.testing.assert_array_equal(block, expected.astype(np.float32))


def test_features_are_copied_and_scanned_in_chunks(tiny_posts, tmp_path, monkeypatch):
    posts, paths, _, feats = tiny_posts
    monkeypatch.setattr(data_load, "_CHUNK", V - 1)                # two chunks: rows [0, V-1) and [V-1, V)
    out = prepare(posts, paths, tmp_path / "out", seed=0, num_neg=NUM_NEG)
    np.testing.assert_array_equal(load_dataset(out).feature_blocks[0], feats["visual"])
    _edit_npy(out, "features_visual.npy", lambda f: _set(f, (V - 1, 5), np.nan))
    with raises_at(out / "features_visual.npy", f"row {V - 1}: expected finite feature values, got NaN or inf"):
        load_dataset(out)


def test_prepare_rejects_missing_or_clashing_feature_files(tiny_posts, tmp_path):
    posts, paths, _, feats = tiny_posts
    with raises_at(tmp_path / "gone.npy", "expected an existing file, got it is missing"):
        prepare(posts, [*paths, tmp_path / "gone.npy"], tmp_path / "out", seed=0, num_neg=NUM_NEG)
    (tmp_path / "other").mkdir()
    np.save(tmp_path / "other" / "visual.npy", feats["visual"])
    with raises_at(tmp_path / "other" / "visual.npy", "expected distinct feature file names, got 'visual' twice"):
        prepare(posts, [*paths, tmp_path / "other" / "visual.npy"], tmp_path / "out", seed=0, num_neg=NUM_NEG)
    with raises_at(posts, "expected at least one features file, got none"):
        prepare(posts, [], tmp_path / "out", seed=0, num_neg=NUM_NEG)
    assert not leftovers(tmp_path / "out")


def test_prepare_refuses_an_existing_output(tiny_posts, tmp_path):
    posts, paths, _, _ = tiny_posts
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with raises_at(out, "expected a new output directory, got an existing one (pass --overwrite to replace it)"):
        prepare(posts, paths, out, seed=0, num_neg=NUM_NEG)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    prepare(posts, paths, out, seed=0, num_neg=NUM_NEG, overwrite=True)
    assert not (out / "keep.txt").exists() and load_dataset(out).num_video == V
    assert leftovers(out) == [out]


def test_prepare_leaves_nothing_when_writing_fails(tiny_posts, tmp_path, monkeypatch):
    posts, paths, _, _ = tiny_posts

    def disk_full(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data_load, "write_json_atomic", disk_full)
    with pytest.raises(OSError, match="No space left"):
        prepare(posts, paths, tmp_path / "out", seed=0, num_neg=NUM_NEG)
    assert not leftovers(tmp_path / "out")


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def test_cli_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        data_load.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("convert", "prepare", "cluster", "inspect"))


def test_cli_prepare_bad_input_is_one_line(tiny_posts, tmp_path):
    posts, paths, rows, _ = tiny_posts
    posts.write_text(_line(rows, 3, "v003\tuser1\n"), encoding="utf-8")
    out = tmp_path / "out"
    proc = run_cli("prepare", "--posts", posts, "--features", *paths, "--out", out, "--seed", 0, "--num_neg", NUM_NEG)
    assert_one_line_error(proc, f"{posts}: row 5: expected 3 tab-separated fields")
    assert not leftovers(out)


def test_cli_in_process(tiny_posts, tiny_dataset, tmp_path, capsys):
    posts, paths, _, _ = tiny_posts
    args = ["prepare", "--posts", str(posts), "--features", *map(str, paths), "--seed", "0"]
    assert data_load.main([*args, "--out", str(tmp_path / "a"), "--num_neg", str(NUM_NEG)]) == 0
    assert "users 6" in capsys.readouterr().out
    assert data_load.main([*args, "--out", str(tmp_path / "b"), "--num_neg", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: prepare: expected num_neg >= 1")
    assert data_load.main([*args, "--out", str(tmp_path / "a"), "--num_neg", str(NUM_NEG)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    legacy = data_load.write_legacy(tiny_dataset, tmp_path / "legacy")
    assert data_load.main(["inspect", str(legacy), "--allow_pickle"]) == 0
    assert "negatives/line 8" in capsys.readouterr().out
    assert data_load.main(["convert", str(legacy), str(tmp_path / "c"), "--allow_pickle"]) == 0
    assert_same_data(load_dataset(tmp_path / "c"), load_dataset(tiny_dataset))


def test_cluster_writes_the_same_data_with_membership_features(tiny_dataset, tmp_path):
    out = data_load.cluster(tiny_dataset, tmp_path / "clustered", k=3, temperature=0.2, seed=1)
    source, clustered = load_dataset(tiny_dataset), load_dataset(out)
    assert clustered.feature_names == ["clusters"]
    m = clustered.features()
    assert m.shape == (source.num_video, 3) and m.sum(1) == pytest.approx(torch.ones(source.num_video), abs=1e-5)
    fit = np.unique(source.train[:, 1].numpy())
    raw = [np.asarray(b) for b in source.feature_blocks]
    assert np.array_equal(m.numpy(), features.cluster_blocks(raw, fit, 3, 0.2, seed=1))
    assert torch.equal(clustered.train, source.train) and clustered.user_names == source.user_names
    for name in ("val", "test"):
        assert torch.equal(getattr(clustered, name).negatives, getattr(source, name).negatives)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["features_from"]["k"] == 3 and meta["features_from"]["blocks"] == ["visual", "acoustic", "textual"]
    assert meta["seed"] == json.loads((tiny_dataset / "meta.json").read_text())["seed"]   # the split's seed stays
    again = data_load.cluster(tiny_dataset, tmp_path / "again", k=3, temperature=0.2, seed=1)
    assert (again / "features_clusters.npy").read_bytes() == (out / "features_clusters.npy").read_bytes()


def test_cluster_refuses_bad_arguments_in_one_line(tiny_dataset, tmp_path):
    out = tmp_path / "clustered"
    proc = run_cli("cluster", tiny_dataset, out, "--k", 0)
    assert_one_line_error(proc, "cluster: expected k >= 1, temperature > 0")
    proc = run_cli("cluster", tiny_dataset, out, "--k", 500)
    assert_one_line_error(proc, f"{tiny_dataset}: cluster: expected k at most the")
    assert not leftovers(out)
    assert run_cli("cluster", tiny_dataset, out, "--k", 2).returncode == 0
    assert_one_line_error(run_cli("cluster", tiny_dataset, out, "--k", 2), "pass --overwrite")
