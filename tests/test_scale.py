"""Tests of the scaling measurements: ``make_data.py --scale`` (presets unchanged), ``scale.py``'s measurement
on ``tiny``, and its driver's choice to project, not run, a full-graph measurement that would not fit."""

import json

import pytest

import make_data
import scale

YFCC = make_data.PRESETS["yfcc"]


def test_scaled_presets_grow_every_count_and_leave_the_presets_alone():
    big = make_data.scaled(YFCC, 4, feature_dims=(8, 4, 4), num_neg=100)
    assert (big.num_user, big.num_hashtag, big.num_video, big.num_topic) == (32504, 92216, 539968, 120)
    assert big.feature_dims == (8, 4, 4) and big.num_neg == 100 and big.personal_size == YFCC.personal_size
    assert big.num_hashtag // (big.num_topic + 1) == pytest.approx(YFCC.num_hashtag // (YFCC.num_topic + 1), rel=0.05)
    assert make_data.scaled(YFCC) == YFCC and make_data.PRESETS["yfcc"].num_video == 134992
    with pytest.raises(ValueError, match="positive scale"):
        make_data.scaled(YFCC, 0)


def test_a_scaled_build_has_the_scaled_counts(tmp_path, capsys):
    assert make_data.main(["--preset", "tiny", "--scale", "2", "--feature_dims", "6,3,2", "--num_neg", "40",
                           "--no_references", "--out", str(tmp_path / "d")]) == 0
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert (meta["num_user"], meta["num_hashtag"], meta["num_video"], meta["num_neg"]) == (60, 300, 1000, 40)
    assert [f["dim"] for f in meta["features"]] == [6, 3, 2]
    assert meta["generator"]["scale"] == 2 and not {"test_recall@10", "test_ndcg@10"} & set(meta["generator"])
    assert make_data.main(["--preset", "tiny", "--feature_dims", "1,2", "--out", str(tmp_path / "e")]) == 2
    assert "three positive integers" in capsys.readouterr().err


@pytest.mark.parametrize("k", [0, 3])
def test_a_measurement_reports_steps_memory_and_subgraph_sizes(tiny_dir, tiny, k):
    row = scale.measure(tiny_dir, k, steps=2, warmup=1, batch_size=256)
    assert row["num_video"] == tiny.num_video and row["num_neigh"] == k and len(row["step_s"]["runs"]) == 2
    assert row["steps_per_epoch"] == 5 and row["epoch_s"] >= 5 * row["step_s"]["median"]
    assert row["peak_rss_bytes"] > row["feature_bytes"] > 0
    assert ("step_videos" in row) == (k > 0)
    if k:
        assert 0 < row["step_videos"] <= row["graph_videos"] + 256 and row["step_pairs"] > 0


def test_full_graph_that_would_not_fit_is_projected_from_the_measured_memory(monkeypatch, tmp_path, capsys):
    videos = {1.0: 1000, 2.0: 2000, 4.0: 4000}

    def fake_dataset(args, s):
        out = tmp_path / f"x{s:g}"
        out.mkdir(exist_ok=True)
        (out / "meta.json").write_text(json.dumps({"num_user": 10, "num_hashtag": 20, "num_video": videos[s]}))
        return out, None

    def fake_measure(args, data, k):          # 1 MB per video plus 100 MB, full graph; 50 MB sampled
        v = videos[float(data.name[1:])]
        return {"num_neigh": k, "num_user": 10, "num_hashtag": 20, "num_video": v, "pairs": v // 2,
                "feature_dim": 284, "step_s": {"median": 0.5}, "epoch_s": 60.0,
                "peak_rss_bytes": (100 + v) * 2**20 if k == 0 else 50 * 2**20,
                **({"step_videos": 300.0, "step_pairs": 900.0} if k else {})}

    monkeypatch.setattr(scale, "ensure_dataset", fake_dataset)
    monkeypatch.setattr(scale, "run_measure", fake_measure)
    monkeypatch.setattr(scale, "available_bytes", lambda: 3500 * 2**20)   # 4,000 videos need ≈ 4.1 GB: no
    out = tmp_path / "scale.json"
    assert scale.main(["--scales", "1,2,4", "--neigh", "3", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["label"], r["num_neigh"], r.get("projected", False)) for r in rows] == [
        ("1×", 0, False), ("1×", 3, False), ("2×", 0, False), ("2×", 3, False), ("4×", 0, True), ("4×", 3, False)]
    assert rows[4]["peak_rss_bytes"] == pytest.approx((100 + 4000) * 2**20) and "step_s" not in rows[4]
    table = capsys.readouterr().out
    assert "*(projected)*" in table and "`--num_neigh 3`" in table and "300 / 900" in table
