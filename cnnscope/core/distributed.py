"""Several training processes: what the training loop asks of the process group (`Dist`: all-reduce,
gather, barrier, rank 0's buffers), starting one process per device under a launcher, and the model
wrapped in DistributedDataParallel. With one process, Dist does nothing.
"""
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from cnnscope.core.runtime import compile_model, resolve_device
from cnnscope.errors import CnnscopeError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # where collective tensors live (nccl needs CUDA)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor, op=dist.ReduceOp.SUM):
        if self.world_size > 1:
            dist.all_reduce(tensor, op=op)
        return tensor

    def any_rank(self, *flags) -> list[bool]:
        """For each flag, whether it is set on any rank (every rank must call)."""
        t = torch.tensor([float(f) for f in flags], device=self.device)
        return [bool(v) for v in self.all_reduce(t, op=dist.ReduceOp.MAX).tolist()]

    def gather(self, obj) -> list:
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()

    def share_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics) on every rank: DDP copies them at each training
        forward, so after an epoch every rank holds its own last batch's update, not the one saved."""
        if self.world_size > 1:
            for buffer in module.buffers():
                shared = buffer.contiguous()  # gloo sends contiguous tensors only
                dist.broadcast(shared, 0)
                if shared is not buffer:
                    buffer.copy_(shared)


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """One process per device under a launcher (WORLD_SIZE/RANK/LOCAL_RANK set), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return Dist(device=device), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise CnnscopeError(f"Distributed training runs on cuda or cpu, not {device.type}; use device cpu or cuda.")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, device), device


def data_parallel(net: nn.Module, skips_weights: bool = False) -> nn.Module:
    """DistributedDataParallel(net). channels_last kernels with a size-1 dim (1x1 convs, depthwise
    weights) get grads whose strides differ from the params' on those dims only (the same memory
    order; DDP copies grads into its buckets either way): its warning about them is dropped.

    `skips_weights`: the forward leaves weights out of the graph (hooks.skips_weights: egrr's depth
    warm-up runs fewer recursion steps). DDP then looks
    for unused parameters after each forward (a walk over the autograd graph, small next to the
    step) and leaves their grads None, as a single process does. static_graph is not valid (the
    graph grows with the depth); a zero weight on the skipped steps would cost their compute and
    let weight decay move weights that a single process leaves alone."""
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return nn.parallel.DistributedDataParallel(net, find_unused_parameters=skips_weights)


def training_model(net: nn.Module, ddp: Dist, compiled: bool, skips_weights: bool = False) -> nn.Module:
    """What the steps run: `net`, in DDP with several processes (looking for unused weights while
    `skips_weights`; once the model uses them all it would find none, and walk the graph every step
    for nothing), compiled with `compiled` (in the first batches; `net` keeps the plain weights)."""
    model = data_parallel(net, skips_weights) if ddp.world_size > 1 else net
    return compile_model(model) if compiled else model
