"""Tests of train.py: the release's command line end to end, seeding, checkpoints, negatives."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluation
import train
from data_load import load_dataset
from model import Config

ROOT = Path(__file__).resolve().parents[1]
RELEASE_FLAGS = ["--l_r=0.001", "--weight_decay=0.1", "--batch_size=1024", "--dim_latent=64", "--num_workers=30",
                 "--aggr_mode=mean", "--scoring_mode=cat"]


def _train_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_release_command_line_runs_end_to_end(tiny_dir, tmp_path):
    out = tmp_path / "run"
    proc = _train_cli(*RELEASE_FLAGS, "--data_path", str(tiny_dir), "--num_epoch=2", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "epoch   1" in proc.stdout and "epoch   2" in proc.stdout and "NDCG" in proc.stdout
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.csv", "best.pt", "results.json"}
    config = json.loads((out / "config.json").read_text())
    assert config["l_r"] == 0.001 and config["weight_decay"] == 0.1 and config["aggr_mode"] == "mean"
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"] and "val_recall@10" in rows[0]
    results = json.loads((out / "results.json").read_text())
    assert results["best_epoch"] in (1, 2) and 0.0 <= results["test"]["recall@10"] <= 1.0
    assert set(results["test"]) >= {f"{m}@{k}" for m in evaluation.METRICS for k in (5, 10)}


def test_help_explains_num_workers_and_no_cuda():
    proc = _train_cli("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())                 # argparse wraps lines
    assert "--num_workers" in text and "capped at the number of cores" in text
    assert "--no-cuda" in text and "--PATH_weight_load" in text


@pytest.mark.parametrize("args, message", [
    (["--aggr_mode=median"], "invalid choice"),
    (["--topk=5"], "including 10"),
    (["--batch_size=0"], "positive"),
])
def test_bad_flags_give_one_line_errors(args, message, tiny_dir, tmp_path):
    proc = _train_cli(*args, "--data_path", str(tiny_dir), "--out", str(tmp_path / "r"))
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr


def test_existing_run_directory_is_refused(tiny_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")
    proc = _train_cli("--data_path", str(tiny_dir), "--out", str(out), "--num_epoch=1")
    assert proc.returncode == 2 and "exists" in proc.stderr and (out / "results.json").read_text() == "{}"


def _run(tiny_dir, out, **kw):
    cfg = Config(**{"data_path": str(tiny_dir), "dim_latent": 16, "num_epoch": 3, **kw})
    return train.run(cfg, out, torch.device("cpu"), progress=False, log=lambda *a: None)


def test_same_seed_same_metrics_other_seed_differs(tiny_dir, tmp_path):
    first = _run(tiny_dir, tmp_path / "a", seed=3)
    again = _run(tiny_dir, tmp_path / "b", seed=3)
    other = _run(tiny_dir, tmp_path / "c", seed=4)
    assert first["test"] == again["test"] and first["val"] == again["val"]
    assert other["val"] != first["val"]


@pytest.mark.parametrize("name", ["gcn_phr", "userpop"])
def test_checkpoint_reloads_to_identical_metrics(tiny_dir, tmp_path, name):
    results = _run(tiny_dir, tmp_path / "run", model_name=name, PATH_weight_save=str(tmp_path / "w.pt"))
    ds = load_dataset(tiny_dir)
    cfg = Config(data_path=str(tiny_dir), dim_latent=16, model_name=name)
    torch.manual_seed(123)                                   # a different init, overwritten by the load
    model = train.build_model(cfg, ds)
    train.load_weights(model, tmp_path / "w.pt")
    model.eval()
    with torch.no_grad():
        test = evaluation.evaluate(ds.test, model.scorer(), ks=(5, 10))
    assert test == results["test"]


def test_loading_a_checkpoint_of_another_shape_names_the_tensor(tiny_dir, tmp_path):
    _run(tiny_dir, tmp_path / "run", num_epoch=1)
    ds = load_dataset(tiny_dir)
    model = train.build_model(Config(dim_latent=32), ds)
    with pytest.raises(SystemExit, match=r"tensor 'user_emb' has shape \(\d+, 16\).*\(\d+, 32\)"):
        train.load_weights(model, tmp_path / "run" / "best.pt")


def test_negatives_avoid_the_videos_own_hashtags(tiny):
    gen = torch.Generator().manual_seed(0)
    for share in (0.0, 0.5, 1.0):
        neg = train.NegativeSampler(tiny.train, tiny.num_hashtag, share, gen).sample()
        own = set(map(tuple, tiny.train[:, 1:].tolist()))                       # (video, hashtag) of train
        assert not any((v, h) in own for v, h in zip(tiny.train[:, 1].tolist(), neg.tolist()))
        seen = set(tiny.train[:, 2].tolist())
        assert set(neg.tolist()) <= seen


def test_popularity_share_shifts_negatives_to_popular_hashtags(tiny):
    count = torch.bincount(tiny.train[:, 2], minlength=tiny.num_hashtag).float()
    mean_pop = {}
    for share in (0.0, 0.5, 1.0):
        gen = torch.Generator().manual_seed(0)
        neg = torch.cat([train.NegativeSampler(tiny.train, tiny.num_hashtag, share, gen).sample()
                         for _ in range(5)])
        mean_pop[share] = count[neg].mean().item()
    assert mean_pop[1.0] > 1.2 * mean_pop[0.5] > 1.44 * mean_pop[0.0]


def test_no_cuda_picks_the_cpu():
    assert train.pick_device("auto", no_cuda=True) == torch.device("cpu")
    assert train.pick_device("cpu", no_cuda=False) == torch.device("cpu")
