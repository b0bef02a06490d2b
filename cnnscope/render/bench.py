"""Renderers of BenchResult (cnnscope bench): a two-column table of quantities and values."""
from cnnscope.core.bench import ALBUMENTATIONS_WORKERS, BenchResult
from cnnscope.render import register
from cnnscope.render.numbers import count, macs
from cnnscope.render.tables import Section, sections_table


def bench_rows(result: BenchResult) -> list[tuple[str, str]]:
    """(quantity, value) for the table and markdown renderings."""
    policy = f" (OMP_WAIT_POLICY={result.omp_wait_policy})" if result.omp_wait_policy else ""
    procs = f"{result.procs} processes x " if result.procs > 1 else ""
    where = f"{result.device}, {procs}{result.threads} threads{policy}" + (", compiled" if result.compile else "") + (
        ", AMP" if result.amp else "") + (", channels_last" if result.channels_last else "")
    measured = f"{result.peak_measured_at.replace('T', ' ')}, cached" if result.peak_cached else "in this run"
    when = f"measured {measured}, load average {result.peak_load_average:g} then"
    return [
        ("model", f"{result.model} ({count(result.params)} params), input {'x'.join(map(str, result.input_shape))}"),
        ("run on", f"{where}; batch {count(result.batch_size)}, median of {count(result.steps)} steps"),
        ("FLOPs per image (forward)", macs(result.flops_per_image)),
        ("training", f"{result.train_images_per_s:,.1f} images/s"),
        ("inference (BN folded)", f"{result.infer_images_per_s:,.1f} images/s ({result.folded_batchnorms} BN folded)"),
        ("data path, batch backend", f"{result.data_images_per_s:,.1f} images/s ({result.augment})"),
        ("data path, albumentations", f"{result.data_albumentations_images_per_s:,.1f} images/s "
                                      f"({ALBUMENTATIONS_WORKERS} workers)"),
        ("achieved training FLOP/s", f"{result.train_gflop_per_s:,.2f} GFLOP/s"),
        ("peak (float32)", f"{result.peak_gflop_per_s:,.2f} GFLOP/s ({result.peak_kernel}; {when})"),
        ("fraction of peak", f"{100 * result.peak_fraction:.1f}% (nominal FLOPs; a Winograd conv can pass 100%)"),
        ("matmul now", f"{result.matmul_now_gflop_per_s:,.2f} GFLOP/s ({result.matmul_size}^2 in every training "
                       "process at once, under this run's load)"),
        ("memory bandwidth (triad)", f"{result.bandwidth_gb_per_s:,.2f} GB/s (measured with the peak)"),
        ("least bytes per step", f"{result.step_min_bytes / 1e6:,.1f} MB (module-boundary activations written and "
                                 "read once; weights, grads, optimizer state)"),
        ("memory roofline", f"{result.roofline_images_per_s:,.1f} images/s"),
        ("fraction of roofline", f"{100 * result.roofline_fraction:.1f}%"),
        ("peak memory", f"{result.peak_memory_mb:,.1f} MB ({result.peak_memory_source})"),
        ("warm-up", f"{result.warmup_s:.1f} s"),
    ]


def table(result: BenchResult, title=None):
    return sections_table([Section(title or f"cnnscope bench {result.model}", ["quantity", "value"],
                                   [list(row) for row in bench_rows(result)])])


def markdown(result: BenchResult, title=None) -> str:
    lines = [f"### {title}", ""] if title else []
    lines += ["| quantity | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in bench_rows(result)]
    return "\n".join(lines) + "\n"


register(BenchResult, table=table, markdown=markdown)
