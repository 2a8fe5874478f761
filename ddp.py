r"""Data-parallel training with ``torch.distributed`` (``torchrun --nproc_per_node=N train.py …``).

``train.py`` runs data-parallel when ``torchrun`` (``python -m torch.distributed.run``) started it with a
world of more than one process (the ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``
variables it sets). The scheme, and why it gives the single-process result:

- **The same global batches.** Every process draws the epoch's negatives and row order from the same
  generator seeded with ``--seed``, so all hold the same global permutation; each takes its contiguous
  share of every global batch of ``--batch_size`` rows (:meth:`Dist.shard`). The global batch, the
  negatives and the number of optimiser steps are those of a single process.
- **The summed gradient.** The loss is summed over the batch (SPEC §3), and ``DistributedDataParallel``
  averages gradients over the N processes, so each process back-propagates N × its shard's loss: the
  all-reduced gradient is :math:`\tfrac{1}{N} \sum_r \nabla (N L_r) = \nabla \sum_r L_r`, the gradient of
  the global batch's loss. Adam's weight decay is applied identically by every process.
- **One writer.** Only rank 0 evaluates, logs and writes the run directory; the others wait for its
  early-stopping decision (:meth:`Dist.broadcast_flag`), which doubles as the barrier of each epoch.
- **Seeds.** The model is initialised from ``--seed`` in every process (and DDP broadcasts rank 0's
  parameters); after that each process reseeds its own random sources — torch's global generator
  (dropout) and the neighbour sampler of ``--num_neigh`` — from ``--seed`` and its rank (:func:`rank_seed`).

Backend: NCCL on CUDA (process r on ``cuda:LOCAL_RANK``), gloo on the CPU. The model's buffers (the
features and the graph, identical in every process) are never broadcast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

RANK_SEED_STRIDE = 1_000_003  # a prime: rank r > 0 seeds with seed + r · stride


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s own random sources (rank 0 keeps ``seed``)."""
    return seed + rank * RANK_SEED_STRIDE


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run (from ``torchrun``'s environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def main(self) -> bool:
        """Rank 0: the process that evaluates, logs and writes."""
        return self.rank == 0

    def shard(self, rows: Tensor) -> Tensor:
        """This process's contiguous share of a global batch ``rows`` [B]: ``B / N`` rows, the first ``B mod N``
        processes one more (empty when ``B < N`` and ``rank ≥ B``). Shapes: rows [B] → [≈ B/N]"""
        return rows.tensor_split(self.world_size)[self.rank]

    def _tensor(self, values: list[float], device: torch.device) -> Tensor:
        # NCCL reduces CUDA tensors only
        return torch.tensor(values, dtype=torch.float64, device=device)

    def all_sum(self, value: Tensor) -> Tensor:
        """The sum of a scalar ``value`` over the processes (every process gets it)."""
        total = value.detach().to(torch.float64).reshape(1).clone()
        tdist.all_reduce(total)
        return total[0]

    def broadcast_flag(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag`` in every process (a collective: every process waits for rank 0)."""
        value = self._tensor([float(flag)], device)
        tdist.broadcast(value, src=0)
        return bool(value.item())

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` (picklable) in every process."""
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj) -> list | None:
        """Every process's ``obj`` (tensors and plain data), in rank order, on rank 0; None elsewhere."""
        out = [None] * self.world_size if self.main else None
        tdist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        tdist.barrier()


def from_env() -> Dist | None:
    """The data-parallel setting ``torchrun`` left in the environment; None for a single process (no
    ``WORLD_SIZE``, or a world of one)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    world = int(os.environ["WORLD_SIZE"])
    return Dist(rank=int(os.environ["RANK"]), world_size=world,
                local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
                local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def init(device: torch.device) -> None:
    """Join the process group: NCCL for a CUDA ``device`` (made the current device), gloo on the CPU."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        tdist.init_process_group("nccl", device_id=device)
    else:
        tdist.init_process_group("gloo")


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


class _BatchLoss(nn.Module):
    """``model.loss`` as a ``forward``, which DDP needs to prepare its gradient all-reduce."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, users: Tensor, videos: Tensor, pos: Tensor, neg: Tensor, rows: Tensor) -> Tensor:
        if users.numel() == 0:  # an empty shard (a last global batch of fewer rows than processes)
            return sum(p.sum() for p in self.model.parameters()) * 0.0  # zero gradients, still all-reduced
        return self.model.loss(users, videos, pos, neg, rows)


def wrap(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model.loss`` wrapped for data-parallel training: call it like ``model.loss``. The model's buffers
    (features, graph: the same data in every process) are left out of DDP's broadcasts."""
    module = _BatchLoss(model)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        module, [f"model.{name}" for name, _ in model.named_buffers()])
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)
