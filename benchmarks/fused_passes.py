"""The compiled fused passes of CPU training with --compile (cnnscope.core.fused), measured: one
training step of each zoo model with them and without, in the same process, in alternating rounds
(so both see the same load), and each fused operation on its own at the shapes where the zoo runs it.

A step is one process of `cnnscope train`'s data-parallel pair: --batch images (64: half of the
recipes' 128) on --threads threads, channels_last, SGD, forward + backward + optimizer step under
the training step's context (cnnscope.core.fastconv.training_ops), with the compiled passes (as
`cnnscope train --compile` runs on the CPU) and without. The first calls compile (their time is
printed, not counted) and must give the plain call's numbers (outputs, and gradients, each within
1e-3 of its largest value: float rounding in another order), else the script stops without timing;
then the median of --rounds timed calls is compared.

    python benchmarks/fused_passes.py                       # every model (~10 min on 2 cores)
    python benchmarks/fused_passes.py --models ectied --rounds 9
"""
import argparse
import os
import statistics
import sys
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


def model_steps(name: str, batch: int) -> tuple[dict, list]:
    """({"plain": step, "fused": step}, the compiled passes the fused one runs) of one model (the same
    weights, learning rate 0, so that both steps see the same model every round; each step returns
    its loss and gradients)."""
    torch.manual_seed(0)
    model = to_channels_last(zoo.build(name, **MODELS[name])).train()
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = torch.randint(0, model(x[:2]).shape[1], (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)

    def step(ops):
        torch.manual_seed(1)  # the same random draws (egrr's gate noise) in both
        with ops:
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return [loss, *(p.grad for p in model.parameters() if p.grad is not None)]

    cpu = torch.device("cpu")
    plain, compiled = fastconv.training_ops(model, cpu, False), fastconv.training_ops(model, cpu, True)
    passes = [fused.tap_sums, *(chain for _, chain in compiled.chains)]
    return {"plain": lambda: step(plain), "fused": lambda: step(compiled)}, passes


def weight_grad_calls(shape, dilation) -> tuple[dict, list]:
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    g = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    args = (x, g, (dilation, dilation), (3, 3), (dilation, dilation))
    return {"plain": lambda: [fastconv.depthwise_weight_grad(*args)],
            "fused": lambda: [fastconv.compiled_weight_grad(*args)]}, [fused.tap_sums]


def chain_calls(cls, shape) -> tuple[dict, list]:
    """A fusable zoo module's chain, forward + backward (output and input gradients), plain and
    compiled: DivisiveNorm's module forward, or egrr's mixing of three branches by gate probabilities."""
    def maps():
        return torch.randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_()

    g = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    chain = fused.fused_chain(cls.fusable_chain, cls.__name__)
    if cls is DivisiveNorm:
        module, args = DivisiveNorm(), (maps(),)
        plain, compiled = module, lambda x: chain(x, module.eps)  # noqa: E731
    else:
        n, _, h, w = shape
        args = (torch.softmax(torch.randn(n, 3, h, w), 1).requires_grad_(), maps(), maps(), maps())
        plain, compiled = cls.fusable_chain, chain

    def forward_backward(function):
        out = function(*args)
        return [out, *torch.autograd.grad(out, args, g)]

    return {"plain": lambda: forward_backward(plain), "fused": lambda: forward_backward(compiled)}, [chain]


def check_equal(what: str, results: dict, passes: list) -> None:
    """Stop, naming `what`, unless every compiled pass compiled and the fused call's tensors equal the
    plain call's, each within 1e-3 of its largest value (summation in another order)."""
    failed = [compiled.what for compiled in passes if compiled.failed]
    if failed:
        sys.exit(f"{what}: compiling {', '.join(failed)} failed, so there is nothing fused to time.")
    for i, (plain, fused_one) in enumerate(zip(results["plain"], results["fused"], strict=True)):
        difference, largest = (plain - fused_one).abs().max().item(), plain.abs().max().item()
        if not difference <= 1e-3 * largest:  # NaN fails too
            sys.exit(f"{what}: tensor {i} of the fused call differs from the plain one by up to {difference:.3g} "
                     f"(its largest value {largest:.3g}); not timed.")


def measure(what: str, calls_and_passes: tuple[dict, list], rounds: int) -> None:
    """Warm up (the first fused call compiles), check the fused call against the plain one, then
    time them in alternating rounds: one table row."""
    calls, passes = calls_and_passes
    started = time.perf_counter()
    results = {name: call() for name, call in calls.items()}
    warm = time.perf_counter() - started
    check_equal(what, results, passes)
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
