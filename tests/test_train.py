"""Tests of train.py: the release's command line end to end, seeding, checkpoints, negatives, resuming
interrupted runs (SIGKILL included) and the refusals made before any training."""

import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import interrupt_at_epoch, run_many, training_batch

import evaluation
import train
from data_load import load_dataset
from model import Config, bpr_loss

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
    (["--ema_decay=1"], "--ema_decay in [0, 1)"),
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


def test_same_seed_same_weights_with_two_threads_on_small(tmp_path):
    """Large enough for torch to split the backward accumulations over threads (``tiny`` is not): without
    deterministic algorithms two runs of the same seed drift apart from the first step. A 1-core machine
    runs one thread and cannot tell."""
    import make_data
    data = make_data.build("small", tmp_path / "small", references=False)
    threads = torch.get_num_threads()
    try:
        for name in ("a", "b"):
            _run(data, tmp_path / name, dim_latent=64, num_epoch=2, patience=0, num_workers=2)
    finally:
        torch.set_num_threads(threads)
    a, b = (torch.load(tmp_path / name / "last.pt", weights_only=True)["model"] for name in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.are_deterministic_algorithms_enabled()                  # restored after the run


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


def test_several_negatives_per_row_have_the_shape_and_the_rules_of_one(tiny):
    gen = torch.Generator().manual_seed(0)
    neg = train.NegativeSampler(tiny.train, tiny.num_hashtag, 0.0, gen, per_row=4).sample()   # [R, 4]
    assert neg.shape == (len(tiny.train), 4)
    own = set(map(tuple, tiny.train[:, 1:].tolist()))
    videos = tiny.train[:, 1].repeat_interleave(4).tolist()
    assert not any((v, h) in own for v, h in zip(videos, neg.flatten().tolist()))
    assert (neg[:, 0] != neg[:, 1]).any()                                      # independent draws


def test_bpr_over_several_negatives_averages_a_rows_terms(tiny):
    pos, neg = torch.tensor([2.0, 0.5]), torch.tensor([[1.0, 3.0, 0.0], [0.5, -1.0, 2.0]])
    by_column = sum(bpr_loss(pos, neg[:, k]) for k in range(3)) / 3
    torch.testing.assert_close(bpr_loss(pos, neg), by_column)
    torch.manual_seed(0)
    for name in ("gcn_phr", "mf"):
        model = train.build_model(Config(model_name=name, dim_latent=8), tiny)
        users, videos, pos_tags, neg_tags, rows = training_batch(tiny, n=32)
        one = model.loss(users, videos, pos_tags, neg_tags, rows)
        same_k = model.loss(users, videos, pos_tags, neg_tags.unsqueeze(1).expand(-1, 3), rows)
        torch.testing.assert_close(one, same_k)
    with pytest.raises(ValueError, match="neg_per_row"):
        Config(model_name="utm", neg_per_row=4).validate()           # UTM's own WARP loss draws its own
    with pytest.raises(ValueError, match="neg_per_row"):
        Config(model_name="userpop", loss="bpr", neg_per_row=4).validate()
    Config(model_name="contagnet", loss="bpr", neg_per_row=4).validate()


def test_popularity_share_shifts_negatives_to_popular_hashtags(tiny):
    count = torch.bincount(tiny.train[:, 2], minlength=tiny.num_hashtag).float()
    mean_pop = {}
    for share in (0.0, 0.5, 1.0):
        gen = torch.Generator().manual_seed(0)
        neg = torch.cat([train.NegativeSampler(tiny.train, tiny.num_hashtag, share, gen).sample()
                         for _ in range(5)])
        mean_pop[share] = count[neg].mean().item()
    assert mean_pop[1.0] > 1.2 * mean_pop[0.5] > 1.44 * mean_pop[0.0]


def test_user_share_draws_the_users_own_hashtags_but_never_the_videos(tiny):
    users, videos = tiny.train[:, 0].tolist(), tiny.train[:, 1].tolist()
    used = {}                                                                  # user -> her training hashtags
    for u, h in zip(users, tiny.train[:, 2].tolist()):
        used.setdefault(u, set()).add(h)
    own = set(map(tuple, tiny.train[:, 1:].tolist()))
    mine = {}
    for share in (0.0, 0.5, 1.0):
        neg = train.NegativeSampler(tiny.train, tiny.num_hashtag, 0.0, torch.Generator().manual_seed(0),
                                    per_row=3, user_share=share, graph=tiny.graph).sample()   # [R, 3]
        rows = [(u, v, h) for u, v, hs in zip(users, videos, neg.tolist()) for h in hs]
        assert not any((v, h) in own for _, v, h in rows)
        mine[share] = sum(h in used[u] for u, _, h in rows) / len(rows)
    # a user draw can only fall back to the global draw when the video carries all her hashtags
    single = sum(len(used[u] - {h for (v2, h) in own if v2 == v}) == 0 for u, v in zip(users, videos))
    assert mine[1.0] >= 1 - single / len(users) - 1e-9
    assert mine[0.0] < 0.2 < mine[0.5] < mine[1.0]
    with pytest.raises(ValueError, match="neg_user_share"):
        Config(neg_user_share=1.5).validate()
    with pytest.raises(ValueError, match="pair graph"):
        train.NegativeSampler(tiny.train, tiny.num_hashtag, 0.0, torch.Generator(), user_share=0.5)


def test_no_cuda_picks_the_cpu():
    assert train.pick_device("auto", no_cuda=True) == torch.device("cpu")
    assert train.pick_device("cpu", no_cuda=False) == torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Interrupted runs: last.pt, --resume, SIGKILL
# --------------------------------------------------------------------------------------------
# Dropout draws from torch's global generator, so these runs need every random state restored.
RESUME = {"dim_latent": 16, "num_epoch": 30, "patience": 0, "dropout": 0.2, "num_workers": 1}
RESUME_FLAGS = [f"--{k}={v}" for k, v in RESUME.items()] + ["--quiet"]
CPU = torch.device("cpu")


def _quiet(cfg, out, **kw):
    return train.run(cfg, out, CPU, progress=False, log=lambda *a: None, **kw)


def _metrics(out):
    """metrics.csv without its timing column."""
    with open(out / "metrics.csv") as fh:
        return [row[:-1] for row in csv.reader(fh)]


def _load_all(out):
    """``{name: checkpoint}`` of every ``*.pt`` in ``out``, each read with ``weights_only=True``."""
    ckpts = {p.name: torch.load(p, map_location="cpu", weights_only=True) for p in sorted(out.glob("*.pt"))}
    assert all(isinstance(c["model"], dict) and c["model"] for c in ckpts.values())
    return ckpts


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory):
    """The uninterrupted run of the ``RESUME`` settings: ``(results, metrics rows, final weights)``."""
    out = tmp_path_factory.mktemp("reference") / "run"
    results = _quiet(Config(data_path=str(tiny_dir), **RESUME), out)
    return results, _metrics(out), torch.load(out / "last.pt", weights_only=True)["model"]


def test_last_checkpoint_holds_the_whole_state_as_plain_data(tiny_dir, tmp_path):
    cfg = Config(data_path=str(tiny_dir), dim_latent=16, num_epoch=2, num_workers=1)
    results = _quiet(cfg, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert set(ckpt) == set(train.CHECKPOINT_KEYS)
    assert ckpt["epoch"] == 2 and ckpt["finished"] and ckpt["config"] == asdict(cfg)
    assert ckpt["best"]["epoch"] == results["best_epoch"] and ckpt["best"]["val"] == results["val"]
    assert set(ckpt["rng"]) == {"negatives", "torch"} and all(s.dtype == torch.uint8 for s in ckpt["rng"].values())
    assert ckpt["optimizer"]["state"] and set(ckpt["best_model"]) == set(ckpt["model"])
    assert [row[0] for row in ckpt["metrics"]] == ["1", "2"]
    assert ckpt["data"]["num_video"] == 500 and ckpt["stale"] in (0, 1)
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]   # no temporary file


def test_an_interrupted_run_resumes_to_exactly_the_same_metrics(tiny_dir, tmp_path, monkeypatch, reference):
    cfg, out = Config(data_path=str(tiny_dir), **RESUME), tmp_path / "run"
    interrupt_at_epoch(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        _quiet(cfg, out)
    monkeypatch.undo()
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and not ckpt["finished"] and not (out / "results.json").exists()
    assert len(_metrics(out)) == 1 + 3
    results = _quiet(cfg, out, resume=True)
    expected, rows, weights = reference
    assert results["test"] == expected["test"] and results["val"] == expected["val"]
    assert results["best_epoch"] == expected["best_epoch"] and _metrics(out) == rows
    final = torch.load(out / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(final[name], w) for name, w in weights.items())
    # A finished run trains nothing more: it evaluates test at best.pt again.
    logs = []
    again = train.run(cfg, out, CPU, progress=False, log=logs.append, resume=True)
    assert again["test"] == expected["test"] and any("nothing left to train" in line for line in logs)
    assert not any(line.startswith("epoch") for line in logs) and _metrics(out) == rows


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_dir, tmp_path, monkeypatch):
    build = train.build_model

    def poisoned(cfg, ds, features=None):                # the loss turns NaN in epoch 3 (one batch per epoch)
        model = build(cfg, ds, features)
        loss, calls = model.loss, []

        def loss_nan_in_epoch_3(*args):
            calls.append(1)
            return loss(*args) * (float("nan") if len(calls) == 3 else 1.0)

        model.loss = loss_nan_in_epoch_3
        return model

    monkeypatch.setattr(train, "build_model", poisoned)
    out = tmp_path / "run"
    cfg = Config(data_path=str(tiny_dir), dim_latent=16, num_epoch=5, batch_size=4096, num_workers=1)
    with pytest.raises(SystemExit, match=r"^error: epoch 3: the loss is nan; stopping \(.*last\.pt \(epoch 2\) and "
                                         r".*best\.pt stay\)$"):
        _quiet(cfg, out)
    ckpts = _load_all(out)
    assert ckpts["last.pt"]["epoch"] == 2 and ckpts["best.pt"]["epoch"] == ckpts["last.pt"]["best"]["epoch"]
    assert all(torch.isfinite(t).all() for t in ckpts["last.pt"]["model"].values() if t.is_floating_point())
    assert not (out / "results.json").exists() and len(_metrics(out)) == 1 + 2


def _start(*args, slow_save=False) -> subprocess.Popen:
    """``python train.py ARGS`` in the background; with ``slow_save`` every checkpoint trickles out in pieces
    (so that a kill lands in the middle of a write)."""
    wrapper = ["-c", SLOW_SAVE] if slow_save else []
    return subprocess.Popen([sys.executable, *wrapper, str(ROOT / "train.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


SLOW_SAVE = """
import io, runpy, sys, time
import torch
save = torch.save
def slow_save(obj, f, *args, **kwargs):
    buffer = io.BytesIO()
    save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    step = len(data) // 40 + 1
    for start in range(0, len(data), step):
        f.write(data[start:start + step])
        f.flush()
        time.sleep(0.005)
torch.save = slow_save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _kill_when(proc: subprocess.Popen, ready, delay: float = 0.0) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds; fail if it ends before."""
    deadline = time.time() + 240
    while not ready():
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        assert time.time() < deadline, "the run never got there"
        time.sleep(0.001)
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def test_sigkill_during_training_and_during_a_checkpoint_write_then_resume(tiny_dir, tmp_path, reference):
    out = tmp_path / "run"
    last, partial = out / "last.pt", out / ".last.pt.tmp"
    # 1. Killed at a random moment of training, once the first epoch has been saved.
    proc = _start("--data_path", str(tiny_dir), *RESUME_FLAGS, "--out", str(out))
    _kill_when(proc, last.exists, delay=random.Random(0).uniform(0.05, 0.3))
    ckpts = _load_all(out)                                        # every *.pt is complete
    epoch = ckpts["last.pt"]["epoch"]
    assert set(ckpts) == {"last.pt", "best.pt"} and 1 <= epoch < RESUME["num_epoch"]
    assert len(_metrics(out)) - 1 in (epoch - 1, epoch) and not (out / "results.json").exists()
    # 2. Resumed, and killed in the middle of writing its next last.pt (the bytes trickle out slowly).
    since = time.time_ns()
    proc = _start("--resume", str(out), "--quiet", slow_save=True)
    _kill_when(proc, lambda: last.stat().st_mtime_ns > since and partial.exists())
    assert partial.exists()                                       # the write in progress is a temporary file...
    ckpts = _load_all(out)                                        # ...and every *.pt is still complete
    assert set(ckpts) == {"last.pt", "best.pt"} and ckpts["last.pt"]["epoch"] > epoch
    # 3. Resumed to the end: the temporary file is gone, the metrics are those of the uninterrupted run.
    proc = _train_cli("--resume", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    expected, rows, weights = reference
    results = json.loads((out / "results.json").read_text())
    assert results["test"] == expected["test"] and results["best_epoch"] == expected["best_epoch"]
    assert _metrics(out) == rows
    final = _load_all(out)["last.pt"]["model"]
    assert all(torch.equal(final[name], w) for name, w in weights.items())


# --------------------------------------------------------------------------------------------
# Refused before any training: resume problems, untrusted checkpoints, output, device
# --------------------------------------------------------------------------------------------
class Evil:
    """Unpickling this creates the directory ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture(scope="module")
def finished_run(tiny_dir, tmp_path_factory) -> Path:
    """A finished one-epoch run directory (copy it before changing anything)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    _quiet(Config(data_path=str(tiny_dir), dim_latent=16, num_epoch=1, num_workers=1), out)
    return out


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def test_resume_refuses_what_it_cannot_continue(finished_run, tiny_dir, tiny_dataset, tmp_path):
    def refused(argv, message):
        with pytest.raises(SystemExit, match=message) as info:
            train.main([str(a) for a in argv])
        assert str(info.value).startswith("error: ") and "\n" not in str(info.value)

    refused(["--resume", tmp_path / "none"], "expected a run directory of train.py, got no such directory")
    bare = tmp_path / "bare"
    bare.mkdir()
    refused(["--resume", bare], r"config\.json: expected the config of the run to resume")
    (bare / "config.json").write_text((finished_run / "config.json").read_text())
    refused(["--resume", bare], r"last\.pt: nothing to resume .* start it again with --out .* --overwrite")
    refused(["--resume", finished_run, "--l_r", "0.5", "--dim_latent=16"],
            r"a resumed run keeps its settings, got --l_r 0\.5 \(the run has 0\.001\)$")
    refused(["--resume", finished_run, "--out", tmp_path / "elsewhere"], "drop --out and --overwrite")
    edited = _copy(finished_run, tmp_path / "edited")
    record = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**record, "l_r": 0.5}))
    refused(["--resume", edited], r"last\.pt: made for another config \(l_r: 0\.001 there, 0\.5 in config\.json\)")
    moved = _copy(finished_run, tmp_path / "moved")                     # its dataset replaced by another one
    data = shutil.copytree(tiny_dir, tmp_path / "data")
    (moved / "config.json").write_text(json.dumps({**record, "data_path": str(data)}))
    ckpt = torch.load(moved / "last.pt", weights_only=True)
    torch.save({**ckpt, "config": {**ckpt["config"], "data_path": str(data)}}, moved / "last.pt")
    shutil.rmtree(data)
    shutil.copytree(tiny_dataset, data)
    refused(["--resume", moved], r"last\.pt: made for another dataset \(num_user 30 there, 6 in ")
    truncated = _copy(finished_run, tmp_path / "truncated")
    (truncated / "last.pt").write_bytes((finished_run / "last.pt").read_bytes()[:4000])
    refused(["--resume", truncated], r"last\.pt: not a readable checkpoint \(")


def test_untrusted_checkpoints_never_run_code(finished_run, tiny_dir, tmp_path):
    marker = tmp_path / "pwned"
    planted = _copy(finished_run, tmp_path / "planted")
    torch.save({"model": {}, "payload": Evil(marker)}, planted / "last.pt")
    with pytest.raises(SystemExit, match=r"last\.pt: expected a checkpoint of tensors, numbers and strings \(read "
                                         r"with weights_only=True, which runs no code\), got .*GLOBAL posix\.mkdir"):
        train.main(["--resume", str(planted)])
    model = train.build_model(Config(dim_latent=16), load_dataset(tiny_dir))
    with pytest.raises(SystemExit, match="weights_only=True"):
        train.load_weights(model, planted / "last.pt")                   # --PATH_weight_load, recommend.py
    assert not marker.exists()
    torch.load(planted / "last.pt", weights_only=False)                  # control: the payload is real
    assert marker.exists()


def test_an_output_directory_that_cannot_be_created_is_refused_before_training(tiny_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(train, "load_dataset", lambda *a, **k: pytest.fail("training started"))
    for out in (blocker / "run", blocker):
        with pytest.raises(SystemExit, match=f"^error: {re.escape(str(out))}: cannot create the run directory: "
                                             f"{re.escape(str(blocker))} is not a directory$"):
            train.main(["--data_path", str(tiny_dir), "--out", str(out)])
    assert blocker.is_file() and blocker.read_text() == ""


def test_cuda_requested_but_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.pick_device("auto", no_cuda=False) == CPU                # the default falls back silently
    for request in ("cuda", "cuda:1"):
        with pytest.raises(SystemExit, match=f"^error: --device {request}: CUDA is not available on this machine"):
            train.pick_device(request, no_cuda=False)
    with pytest.raises(SystemExit, match="^error: --device gpu: expected auto, cpu, cuda or cuda:N$"):
        train.pick_device("gpu", no_cuda=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit, match="expected a CUDA device index below 1"):
        train.pick_device("cuda:3", no_cuda=False)
    assert train.pick_device("cuda", no_cuda=True) == CPU


@pytest.fixture(scope="module")
def cli_refusals(tiny_dir, tmp_path_factory) -> dict:
    """``{case: (process, --out or run directory, expected text)}`` of train.py refusing at the command line."""
    root = tmp_path_factory.mktemp("refusals")
    (root / "a_file").write_text("")
    train_py = [sys.executable, str(ROOT / "train.py"), "--data_path", str(tiny_dir), "--num_epoch=1", "--quiet"]
    hide_gpus = ["env", "CUDA_VISIBLE_DEVICES="] if shutil.which("env") else []
    cases = {
        "cuda_unavailable": (hide_gpus + train_py + ["--device", "cuda", "--out", str(root / "gpu_run")],
                             root / "gpu_run", "--device cuda: CUDA is not available on this machine"),
        "out_under_a_file": (train_py + ["--out", str(root / "a_file" / "run")], root / "a_file" / "run",
                             "is not a directory"),
    }
    procs = run_many({name: argv for name, (argv, _, _) in cases.items()})
    return {name: (procs[name], out, text) for name, (_, out, text) in cases.items()}


@pytest.mark.parametrize("name", ["cuda_unavailable", "out_under_a_file"])
def test_cli_refusals_are_one_line_and_leave_nothing(name, cli_refusals):
    proc, out, text = cli_refusals[name]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# The weight average (--ema_decay)
# --------------------------------------------------------------------------------------------
def test_weight_average_follows_its_recursion_and_swaps_back():
    layer = torch.nn.Linear(3, 2)
    average = train.WeightAverage(layer, 0.75)
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    with average.swapped():                                     # nothing averaged yet: nothing changes
        assert all(torch.equal(p, before[n]) for n, p in layer.named_parameters())
    history = []
    for _ in range(4):
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(torch.randn_like(p))
        history.append({n: p.detach().clone() for n, p in layer.named_parameters()})
        average.update()
    expected = {n: history[0][n] for n in history[0]}           # a_1 = w_1, a_t = d a_(t-1) + (1 - d) w_t
    for weights in history[1:]:
        expected = {n: 0.75 * expected[n] + 0.25 * weights[n] for n in expected}
    with average.swapped():
        assert all(torch.allclose(p, expected[n]) for n, p in layer.named_parameters())
    assert all(torch.equal(p, history[-1][n]) for n, p in layer.named_parameters())   # the weights are back
    with pytest.raises(SystemExit, match="weight average"):
        average.load_state_dict({"weight": torch.zeros(5)}, "last.pt")


def _weights_of(model, state):
    model.load_state_dict({**model.state_dict(), **state})
    return model


def test_validation_and_best_checkpoint_take_the_average(tiny_dir, tmp_path):
    cfg = Config(data_path=str(tiny_dir), dim_latent=16, num_epoch=3, patience=0, num_workers=1, ema_decay=0.9)
    results = _quiet(cfg, tmp_path / "run")
    ds = load_dataset(tiny_dir)
    model = train.build_model(cfg, ds).eval()
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    assert set(last["average"]) == {n for n, _ in model.named_parameters()}
    with torch.no_grad():
        val_average = evaluation.evaluate(ds.val, _weights_of(model, last["average"]).scorer())
        val_weights = evaluation.evaluate(ds.val, _weights_of(model, last["model"]).scorer())
        val_best = evaluation.evaluate(ds.val, _weights_of(model, best).scorer())
    logged = _metrics(tmp_path / "run")
    column = logged[0].index("val_ndcg@10")
    assert float(logged[-1][column]) == pytest.approx(val_average["ndcg@10"], abs=1e-6)   # epoch 3: the average
    assert val_weights["ndcg@10"] != pytest.approx(val_average["ndcg@10"], abs=1e-6)
    # best.pt holds what was validated at the best epoch: the average of then
    assert float(logged[results["best_epoch"]][column]) == pytest.approx(val_best["ndcg@10"], abs=1e-6)


def test_an_interrupted_run_with_the_average_resumes_to_the_same_metrics(tiny_dir, tmp_path, monkeypatch):
    cfg = Config(data_path=str(tiny_dir), **{**RESUME, "num_epoch": 8}, ema_decay=0.8)
    expected = _quiet(cfg, tmp_path / "whole")
    interrupt_at_epoch(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        _quiet(cfg, tmp_path / "run")
    monkeypatch.undo()
    results = _quiet(cfg, tmp_path / "run", resume=True)
    assert results["test"] == expected["test"] and _metrics(tmp_path / "run") == _metrics(tmp_path / "whole")
    whole, resumed = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("whole", "run"))
    assert all(torch.equal(resumed["average"][n], t) for n, t in whole["average"].items())
