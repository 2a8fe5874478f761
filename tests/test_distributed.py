"""Tests of data-parallel training (``torchrun --nproc_per_node=N train.py``, ddp.py): two gloo processes on
the CPU give the single-process result, write nothing from rank 1, resume exactly, refuse what they must."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ddp
import train
from data_load import load_dataset
from model import Config

ROOT = Path(__file__).resolve().parents[1]
# tiny has 1,090 training rows = 3 × 363 + 1: the last global batch has one row, so rank 1's share is empty
SETTINGS = {"dim_latent": 16, "num_epoch": 3, "batch_size": 363, "patience": 0, "num_workers": 1}


def _flags(settings: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in settings.items()] + ["--quiet"]


def _torchrun(*args, nproc=2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(ROOT / "train.py"), *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _ddp(*args, nproc=2) -> subprocess.CompletedProcess:
    return subprocess.run(_torchrun(*args, nproc=nproc), cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=_env())


def _metrics(out: Path) -> list[list[str]]:
    with open(out / "metrics.csv") as fh:
        return [row[:-1] for row in csv.reader(fh)]                      # without the timing column


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own), from /proc."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return [d for c in children for d in (c, *_descendants(c))]


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_dir, tmp_path):
    proc = _ddp("--data_path", str(tiny_dir), *_flags(SETTINGS), "--out", str(tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ddp     2 processes (gloo), 363 rows per global batch") == 1   # rank 0 logs alone
    assert proc.stdout.count("run directory:") == 1 and proc.stdout.count("epoch   3") == 1
    single = train.run(Config(data_path=str(tiny_dir), **SETTINGS), tmp_path / "one", torch.device("cpu"),
                       progress=False, log=lambda *a: None)
    ddp_results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    for split in ("val", "test"):
        assert ddp_results[split] == pytest.approx(single[split], abs=1e-6), split
    assert ddp_results["best_epoch"] == single["best_epoch"]
    ddp_rows, rows = _metrics(tmp_path / "ddp"), _metrics(tmp_path / "one")
    losses = [(float(a[1]), float(b[1])) for a, b in zip(ddp_rows[1:], rows[1:])]   # mean loss per row, per epoch
    assert len(losses) == 3 and all(a == pytest.approx(b, rel=1e-5) for a, b in losses)
    weights = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["model"]
    reference = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    assert set(weights) == set(reference)
    for name, w in weights.items():
        assert torch.allclose(w, reference[name], atol=1e-5, rtol=1e-4), name
    torch.manual_seed(0)
    initial = train.build_model(Config(**SETTINGS), load_dataset(tiny_dir)).state_dict()
    assert max(float((w - initial[n]).abs().max()) for n, w in weights.items()) > 1e-2   # far beyond the tolerance
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(train.RUN_FILES)   # no stray files
    ckpt = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert len(ckpt["rng"]["ranks"]) == 2                             # both processes' random states


def test_an_interrupted_ddp_run_resumes_to_the_uninterrupted_result(tiny_dir, tmp_path):
    # dropout and sampling: each process has its own random states, which last.pt keeps and --resume restores
    settings = {**SETTINGS, "num_epoch": 5, "batch_size": 256, "dropout": 0.3, "num_neigh": 3}
    args = ["--data_path", str(tiny_dir), *_flags(settings)]
    reference = _ddp(*args, "--out", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "run"
    proc = subprocess.Popen(_torchrun(*args, "--out", str(out)), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=_env(), start_new_session=True)
    for line in proc.stdout:                           # SIGKILL both workers and the launcher during epoch 3
        if line.startswith("epoch   2"):
            for pid in [*_descendants(proc.pid), proc.pid]:
                os.kill(pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    epoch = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert 1 <= epoch < 5 and not (out / "results.json").exists()
    resumed = _ddp("--resume", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"epoch {epoch} done" in resumed.stdout
    assert json.loads((out / "results.json").read_text())["test"] == \
        json.loads((tmp_path / "ref" / "results.json").read_text())["test"]
    assert _metrics(out) == _metrics(tmp_path / "ref")
    final = torch.load(out / "last.pt", weights_only=True)["model"]
    expected = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(final[name], w) for name, w in expected.items())


def test_shards_split_each_global_batch_in_rank_order():
    rows = torch.arange(10)
    for world in (1, 2, 3, 4):
        shards = [ddp.Dist(rank, world, rank, world).shard(rows) for rank in range(world)]
        assert torch.equal(torch.cat(shards), rows)
        assert max(s.numel() for s in shards) - min(s.numel() for s in shards) <= 1
    assert ddp.Dist(2, 3, 2, 3).shard(torch.arange(2)).numel() == 0    # fewer rows than processes
    assert ddp.rank_seed(7, 0) == 7 and len({ddp.rank_seed(7, r) for r in range(8)}) == 8


def test_resume_with_another_number_of_processes_is_refused(tiny_dir, tmp_path):
    cfg = Config(data_path=str(tiny_dir), dim_latent=16, num_epoch=1, num_workers=1)
    train.run(cfg, tmp_path / "run", torch.device("cpu"), progress=False, log=lambda *a: None)
    data = train.data_record(tiny_dir, load_dataset(tiny_dir))
    with pytest.raises(SystemExit, match=r"made by 1 training process\(es\), resumed with 2; resume it as it "
                                         r"ran: python train.py --resume"):
        train.read_checkpoint(tmp_path / "run" / "last.pt", cfg, data, ddp.Dist(0, 2, 0, 2))


def test_a_fixed_gpu_index_is_refused_under_torchrun():
    with pytest.raises(SystemExit, match="each process takes the GPU of its LOCAL_RANK"):
        train.pick_ddp_device("cuda:1", False, ddp.Dist(1, 2, 1, 2))
    assert train.pick_ddp_device("cpu", False, ddp.Dist(1, 2, 1, 2)) == torch.device("cpu")
    assert train.pick_ddp_device("auto", True, ddp.Dist(1, 2, 1, 2)) == torch.device("cpu")


def test_one_process_under_torchrun_is_the_plain_run(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert ddp.from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert ddp.from_env() == ddp.Dist(rank=3, world_size=4, local_rank=1, local_world_size=2)
