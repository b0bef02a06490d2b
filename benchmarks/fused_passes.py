"""The compiled fused passes of CPU training with --compile (cnnscope.core.fused), measured: one
training step of each zoo model with them and without, in the same process, in alternating rounds
(so both see the same load), and each fused operation on its own at the shapes where the zoo runs it.

A step is one process of `cnnscope train`'s data-parallel pair: --batch images (64: half of the
recipes' 128) on --threads threads, channels_last, SGD, forward + backward + optimizer step under
the training step's context (cnnscope.core.fastconv.training_ops), with the compiled passes (as
`cnnscope train --compile` runs on the CPU) and without. The first calls compile (their time is
printed, not counted); the median of --rounds timed calls is compared.

    python benchmarks/fused_passes.py                       # every model (~10 min on 2 cores)
    python benchmarks/fused_passes.py --models ectied --rounds 9
"""
import argparse
import os
import statistics
import time

from cnnscope.core.runtime import tune_cpu_runtime

tune_cpu_runtime()  # as the CLI does, before torch is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cnnscope import zoo  # noqa: E402
from cnnscope.core import fastconv, fused  # noqa: E402
from cnnscope.core.fold import to_channels_last  # noqa: E402
from cnnscope.zoo.blocks import DivisiveNorm  # noqa: E402
from cnnscope.zoo.egrr import GatedDilatedDepthwise  # noqa: E402

MODELS = {"basic": {}, "tiny": {}, "dilated": {}, "ectied": {}, "egrr": {}, "swrn": {"depth": 16, "width": 4}}
# (what, shape, dilation) of the depthwise weight gradients measured, at the zoo's shapes, batch 64
OPERATIONS = [
    ("depthwise weight grad, 256 x 32 x 32, d=2 (ectied)", (64, 256, 32, 32), 2),
    ("depthwise weight grad, 48 x 32 x 32, d=2 (egrr stage 1)", (64, 48, 32, 32), 2),
    ("depthwise weight grad, 192 x 8 x 8, d=4 (egrr stage 4)", (64, 192, 8, 8), 4),
    ("depthwise weight grad, 64 x 16 x 16, d=3 (tiny c4)", (64, 64, 16, 16), 3),
]


def interleaved(calls: dict, rounds: int) -> dict:
    """{name: median seconds} of the calls, one of each per round."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def model_steps(name: str, batch: int) -> dict:
    """{"plain": step, "fused": step} of one model (the same weights, learning rate 0, so that both
    steps see the same model every round)."""
    torch.manual_seed(0)
    model = to_channels_last(zoo.build(name, **MODELS[name])).train()
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = torch.randint(0, model(x[:2]).shape[1], (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)

    def step(ops):
        with ops:
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    cpu = torch.device("cpu")
    plain, compiled = fastconv.training_ops(model, cpu, False), fastconv.training_ops(model, cpu, True)
    return {"plain": lambda: step(plain), "fused": lambda: step(compiled)}


def weight_grad_calls(shape, dilation) -> dict:
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    g = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    args = (x, g, (dilation, dilation), (3, 3), (dilation, dilation))
    return {"plain": lambda: fastconv.depthwise_weight_grad(*args), "fused": lambda: fastconv.compiled_weight_grad(*args)}


def chain_calls(cls, shape) -> dict:
    """A fusable zoo module's chain, forward + backward, plain and compiled: DivisiveNorm's module
    forward, or egrr's mixing of three branches by gate probabilities."""
    def maps():
        return torch.randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_()

    g = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    if cls is DivisiveNorm:
        x, module = maps(), DivisiveNorm()
        plain, args = module, (x,)
        compiled = lambda x: fused.fused_chain(DivisiveNorm.fusable_chain, "DivisiveNorm")(x, module.eps)  # noqa: E731
    else:
        n, _, h, w = shape
        args = (torch.softmax(torch.randn(n, 3, h, w), 1).requires_grad_(), maps(), maps(), maps())
        plain, compiled = cls.fusable_chain, fused.fused_chain(cls.fusable_chain, cls.__name__)
    return {"plain": lambda: plain(*args).backward(g), "fused": lambda: compiled(*args).backward(g)}


def measure(what: str, calls: dict, rounds: int) -> None:
    started = time.perf_counter()
    for call in calls.values():  # warm-up; the first fused call compiles
        call()
    warm = time.perf_counter() - started
    load = os.getloadavg()[0]
    seconds = interleaved(calls, rounds)
    print(f"| {what} | {seconds['plain'] * 1e3:,.1f} | {seconds['fused'] * 1e3:,.1f} | "
          f"**{seconds['plain'] / seconds['fused']:.2f}x** | {warm:.0f} s | {load:.2f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-operations", action="store_true", help="Only the training steps.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| what | plain (ms) | fused (ms) | plain / fused | warm-up | load before |\n|---|---:|---:|---:|---:|---:|")
    if not args.no_operations:
        for what, shape, dilation in OPERATIONS:
            measure(what, weight_grad_calls(shape, dilation), args.rounds)
        measure("DivisiveNorm forward + backward, 256 x 32 x 32 (ectied)",
                chain_calls(DivisiveNorm, (64, 256, 32, 32)), args.rounds)
        for channels, size in ((48, 32), (192, 8)):
            measure(f"egrr's gate mixing forward + backward, {channels} x {size} x {size}",
                    chain_calls(GatedDilatedDepthwise, (64, channels, size, size)), args.rounds)
    for name in args.models:
        measure(f"training step of {name}, batch {args.batch}", model_steps(name, args.batch), args.rounds)


if __name__ == "__main__":
    main()
