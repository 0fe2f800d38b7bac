"""Data-parallel protection: the collective mechanics a min-min run uses across processes (torchrun).

A distributed protection runs the same min-min loop in every process ("rank") of a torch.distributed
process group; every rank holds the whole dataset, the whole perturbation and an identical copy of the
surrogates, and draws every random number the single-process run draws, in the same order, from the same
seeded generator. Only the work is split:

- surrogate training: each rank computes the gradient of its slice of the same global batch and the
  trainable parameters' gradients are all-reduced, weighted by each rank's share of the batch, so every
  rank applies the full-batch mean-loss gradient in the same AdamW step (:meth:`World.average_gradients`);
- perturbation steps: the step's batches (the single-process batches) are dealt to the ranks round-robin
  (:meth:`World.owns`); each rank steps its own and the results are all-gathered
  (:meth:`World.share_tensors`, :meth:`World.share_objects`);
- scoring: each rank scores its batches and the per-sample values are summed into place
  (:meth:`World.sum`), so every rank computes the same means.

Gradient synchronisation is an explicit ``torch.distributed.all_reduce`` of one flat buffer of the
trainable parameters' gradients (what DDP's reducer does per bucket), not a
``DistributedDataParallel`` wrapper: a surrogate is driven through its ``loss`` method, not one
module's ``forward``, and the trainable set changes every restart (fresh LoRA adapters), so a wrapper
would have to be rebuilt every round.

:func:`process_group` starts and ends the group from the environment ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU, nccl on CUDA with
rank r on ``cuda:LOCAL_RANK``. :func:`current_world` is the group the loop sees (None outside one, or
with one process: the single-process path, unchanged).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

__all__ = ["World", "current_world", "process_group", "launched_by_torchrun", "TORCHRUN_VARIABLES",
           "DistributedLaunchError"]

#: the environment variables torchrun sets that :func:`process_group` reads
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedLaunchError(RuntimeError):
    """A distributed run was asked for outside a torchrun launch (the process-group environment is missing)."""


def launched_by_torchrun(env: Optional[Mapping[str, str]] = None) -> bool:
    """Whether ``env`` (default: ``os.environ``) holds every variable of :data:`TORCHRUN_VARIABLES`."""
    env = os.environ if env is None else env
    return all(k in env for k in TORCHRUN_VARIABLES)


class World:
    """The process group as the min-min loop uses it: this process's rank, the group size and the
    collectives on the loop's data.

    Attributes:
        rank: this process's rank (0 writes the release, the checkpoints and the logs).
        size: number of processes.
        device: where collective buffers live (CPU for gloo, this rank's CUDA device for nccl).
    """

    def __init__(self, rank: int, size: int, device: torch.device) -> None:
        self.rank, self.size, self.device = int(rank), int(size), torch.device(device)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    # ------------------------------------------------------------------ splitting the work
    def owns(self, k: int) -> bool:
        """Whether batch number ``k`` of a step is this rank's (batches are dealt round-robin)."""
        return k % self.size == self.rank

    def owner(self, k: int) -> int:
        """The rank that steps batch number ``k``."""
        return k % self.size

    def split_batch(self, idx: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """This rank's contiguous slice of one global training batch (possibly empty) and its share of the
        batch (slice length / batch length), the weight of its gradient in :meth:`average_gradients`."""
        part = torch.tensor_split(idx, self.size)[self.rank]
        return part, len(part) / max(1, len(idx))

    # ------------------------------------------------------------------ collectives
    def average_gradients(self, params: Sequence[torch.nn.Parameter], share: float) -> None:
        """Replace every parameter's ``.grad`` by the share-weighted sum over the ranks (in place).

        Each rank's gradient is of the mean loss over its slice of the batch; weighting it by the slice's
        share of the batch makes the sum the gradient of the mean loss over the whole batch (equal to
        the single-process gradient up to float summation order). A parameter no rank has a gradient for
        keeps ``grad=None`` (the optimiser skips it, as in one process); one that only some ranks reached
        counts as zero on the others. One all-reduce of a float32 buffer (plus one of the presence flags).
        """
        params = list(params)
        if not params:
            return
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self.device)
        dist.all_reduce(present, op=dist.ReduceOp.MAX)
        used = [p for p, flag in zip(params, present.tolist()) if flag]
        if not used:
            return
        flat = torch.cat([(p.grad.detach().float() * share if p.grad is not None
                           else torch.zeros(p.numel(), device=p.device)).reshape(-1).to(self.device)
                          for p in used])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in used:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(device=p.device, dtype=p.dtype)
            offset += n

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over the ranks (a new tensor on ``tensor``'s device). Values
        only one rank fills (zeros elsewhere) come back exactly."""
        buf = tensor.detach().to(self.device).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(tensor.device)

    def share_tensors(self, tensors: List[torch.Tensor], batches: Sequence[torch.Tensor]) -> None:
        """All-gather per-item tensors after a step: ``tensors[i]`` for every item ``i`` of batch ``k`` is
        replaced (in place in the list) by the owner's (:meth:`owner`) value. Every rank knows each
        item's shape, so one flat buffer per rank (padded to the longest) is gathered and unpacked; the
        values arrive bit for bit."""
        owned: List[List[int]] = [[] for _ in range(self.size)]
        for k, idx in enumerate(batches):
            owned[self.owner(k)].extend(idx.tolist())
        lengths = [sum(tensors[i].numel() for i in items) for items in owned]
        longest = max(lengths)
        if not longest:
            return
        dtype = tensors[owned[self.rank][0]].dtype if owned[self.rank] else tensors[0].dtype
        mine = torch.zeros(longest, dtype=dtype, device=self.device)
        if owned[self.rank]:
            mine[:lengths[self.rank]] = torch.cat([tensors[i].detach().reshape(-1) for i in owned[self.rank]]
                                                  ).to(self.device, dtype)
        bufs = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(bufs, mine)
        for r, items in enumerate(owned):
            if r == self.rank:
                continue
            offset = 0
            for i in items:
                t = tensors[i]
                tensors[i] = bufs[r][offset:offset + t.numel()].view_as(t).to(t.device, t.dtype).clone()
                offset += t.numel()

    def share_objects(self, values: List[Any], items: Sequence[int]) -> None:
        """All-gather picklable per-item values (trigger words, insertion positions): each rank sends
        ``values[i]`` for its ``items`` and every rank writes every rank's into ``values`` (in place)."""
        gathered: List[Optional[Dict[int, Any]]] = [None] * self.size
        dist.all_gather_object(gathered, {int(i): values[int(i)] for i in items})
        for r, part in enumerate(gathered):
            if r != self.rank:
                for i, v in part.items():
                    values[i] = v

    def gather_objects(self, value: Any) -> List[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        gathered: List[Any] = [None] * self.size
        dist.all_gather_object(gathered, value)
        return gathered

    def check_same(self, value: Any, what: str) -> None:
        """Raise ``RuntimeError`` naming ``what`` unless every rank passes an equal ``value`` (e.g. the run's
        fingerprint: every rank must load the same data, config and surrogates)."""
        values = self.gather_objects(value)
        if any(v != values[0] for v in values):
            raise RuntimeError(f"the ranks disagree on {what}; every rank must be launched with the same "
                               f"arguments and see the same files")


def current_world() -> Optional[World]:
    """The initialised process group as a :class:`World`, or None when there is none or it has one process
    (the single-process path)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    return World(dist.get_rank(), dist.get_world_size(), device)


@contextlib.contextmanager
def process_group(device: str = "cpu", timeout_s: float = 1800.0) -> Iterator[Tuple[Optional[World], str]]:
    """Start the process group torchrun describes, yield (:func:`current_world`, this rank's device), and
    destroy the group on exit.

    Args:
        device: the run's device: ``cpu`` (gloo backend) or ``cuda`` / ``cuda:K`` (nccl backend; rank r
            runs on ``cuda:LOCAL_RANK`` whatever K).
        timeout_s: how long a collective waits for the other ranks.

    Raises:
        DistributedLaunchError: the environment lacks :data:`TORCHRUN_VARIABLES`.
    """
    env = os.environ
    missing = [k for k in TORCHRUN_VARIABLES if k not in env]
    if missing:
        raise DistributedLaunchError(
            f"--distributed needs the process-group environment torchrun sets ({', '.join(missing)} missing); "
            f"launch with: torchrun --nproc-per-node N -m toolkit.cli protect --distributed ...")
    cuda = str(device).startswith("cuda")
    if cuda:
        device = f"cuda:{int(env['LOCAL_RANK'])}"
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", rank=int(env["RANK"]),
                            world_size=int(env["WORLD_SIZE"]), timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield current_world(), str(device)
    finally:
        dist.destroy_process_group()
