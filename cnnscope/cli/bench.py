"""bench: training and inference speed against the machine's peak."""
import click

from cnnscope.cli.common import (
    SPEC_RUNS_CODE, cli, ctor_option, device_option, emit, format_option, input_option, procs_option, seed_option,
    spec_argument, verbosity_options,
)


@cli.command("bench", epilog=SPEC_RUNS_CODE)
@spec_argument
@ctor_option
@input_option
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@device_option()
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed steps of each measurement (after 3 warm-up steps).")
@click.option("--compile", "compile", is_flag=True,
              help="torch.compile as `cnnscope train --compile` does (on CUDA the model, on the CPU the training "
                   "step's fused passes; the inference model on either): slower first batches, faster steps after. "
                   "It compiles during the warm-up, which warmup_s includes.")
@click.option("--amp/--no-amp", default=None, help="float16 autocast (CUDA only) [default: on with CUDA].")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="Model and input in channels_last memory format.")
@procs_option
@seed_option(used_for="of the weights and the synthetic batches")
@click.option("--measure-peak", is_flag=True,
              help="Measure the machine's peak and memory bandwidth again (best on a quiet machine) and "
                   "cache them, unless the cached peak is higher; without it the cached ones are used, measured "
                   "the first time.")
@format_option()
@verbosity_options
def bench_cmd(spec, ctor, input_shape, batch_size, device, steps, compile, amp, channels_last, procs, seed,
              measure_peak, fmt, reporter):
    """Training and inference speed of SPEC on synthetic batches, against this machine's peak.

    Measures training images/s (forward + backward + the recipe's optimizer step), inference
    images/s (inference_mode, batch norm folded, channels_last), the training data path alone
    (the batch augmentation backend and, for comparison, the seeds' albumentations one with 2
    workers, on a uint8 tensor with the recipe's augmentation), the forward FLOPs per image
    (2 x MACs), the achieved training FLOP/s (3 x forward FLOPs x images/s) and its fraction of
    the peak, the memory roofline and its fraction, and the peak memory. Each step time is the
    median of --steps timed steps. Training runs as `cnnscope train` runs it: on the CPU in
    --procs data-parallel processes (DistributedDataParallel, gloo; the all-reduce is timed too).

    Two yardsticks of the machine, measured the first time (and with --measure-peak) before any
    training process starts, with the load average of that moment, and cached per machine in
    $CNNSCOPE_CACHE_DIR (default ~/.cache/cnnscope; a lower peak measured again is not kept: load
    only slows a measurement down): the peak, the fastest of 12 calls of each of three float32
    kernels on all cores (a 2048 x 2048 matmul; on the CPU also oneDNN's 1x1 and 3x3 convs on
    channels_last maps, as training runs them: a BLAS may take a narrower vector path than the
    processor has); the memory bandwidth, the fastest of 10 STREAM triads
    (a = b + s*c over 128 MiB arrays). The fraction of peak counts a convolution's nominal
    multiply-adds, so one computed with fewer (Winograd) can exceed 1. The memory roofline is the
    batch over the least bytes a training step moves (every tensor entering or leaving a leaf module
    written once and read once; weights, gradients and optimizer state read and written once)
    divided by the bandwidth: no implementation trains faster on this machine. The matmul is also
    timed in every training process in the same rounds as the steps ("matmul now"): what the load
    of the moment leaves of the peak.

    \b
    JSON: {model, device, threads (per training process), procs, omp_wait_policy, batch_size,
      steps, input_shape, compile,
      amp, channels_last, augment, params, flops_per_image, train_images_per_s,
      infer_images_per_s, data_images_per_s, data_albumentations_images_per_s,
      train_gflop_per_s, peak_gflop_per_s, peak_kernel (the kernel that reached the peak),
      peak_fraction, peak_load_average,
      peak_measured_at (ISO time), peak_cached, matmul_now_gflop_per_s, bandwidth_gb_per_s,
      step_min_bytes (the whole batch, all processes), roofline_images_per_s, roofline_fraction,
      matmul_size, folded_batchnorms,
      peak_memory_mb, peak_memory_source ("cuda_max_allocated" | "cpu_max_rss": the process's
      peak RSS), warmup_s (training warm-up seconds, compilation included)}
    Rates are images/s, FLOPs per image forward (2 x MACs), fractions ratios (0.5 = 50%).

    \b
    Examples:
      cnnscope bench basic
      cnnscope bench dilated --batch-size 256 --steps 10 --format json
      cnnscope bench egrr --compile
      cnnscope bench tiny --measure-peak
      cnnscope bench swrn --ctor depth=16 --ctor width=4 --device cuda
    """
    from cnnscope.runs import bench
    from cnnscope.runs.spec import parse_key_values

    result = bench.bench(spec, parse_key_values(ctor), batch_size=batch_size, device=device, steps=steps,
                         compile=compile, amp=amp, channels_last=channels_last, input_shape=input_shape,
                         procs=procs, seed=seed, measure_peak=measure_peak, reporter=reporter)
    emit(fmt, result)
