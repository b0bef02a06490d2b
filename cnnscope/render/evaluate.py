"""The classification report of an EvalResult: a rich table and markdown (also the run folder's
classification_report.md)."""
from cnnscope.core.metrics import EvalResult
from cnnscope.render import register


def _averages(result: EvalResult):
    return (("macro avg", result.macro_avg), ("weighted avg", result.weighted_avg))


def markdown(result: EvalResult, title=None) -> str:
    lines = [
        f"Test accuracy {result.test_acc:.2f}% ({result.num_test} images), test loss {result.test_loss:.4f}",
        "",
        "| class | precision | recall | f1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result.per_class:
        lines.append(f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
    for name, avg in _averages(result):
        lines.append(f"| **{name}** | {avg['precision']:.3f} | {avg['recall']:.3f} | {avg['f1']:.3f} | {result.num_test} |")
    absent = _without_test_images(result)
    if absent:
        lines += ["", f"No test images of {absent}: recall and F1 undefined (shown as 0)."]
    if result.top_confusions:
        lines += ["", "Top confusions (true -> predicted):", ""]
        lines += [f"- {c['true']} -> {c['pred']}: {c['count']} ({100 * c['rate']:.1f}% of {c['true']})"
                  for c in result.top_confusions]
    return "\n".join(lines) + "\n"


def table(result: EvalResult, title=None):
    """The classification report as a rich table, the headline numbers in its title."""
    from rich.table import Table

    table = Table(title=f"{result.run}: test acc {result.test_acc:.2f}% ({result.num_test} images), "
                        f"loss {result.test_loss:.4f}")
    for name in ("class", "precision", "recall", "f1", "support"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for r in result.per_class:
        table.add_row(r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    for name, avg in _averages(result):
        table.add_row(f"[bold]{name}[/]", f"{avg['precision']:.3f}", f"{avg['recall']:.3f}", f"{avg['f1']:.3f}",
                      str(result.num_test))
    absent = _without_test_images(result)
    captions = [f"No test images of {absent}."] if absent else []
    if result.top_confusions:
        captions.append("Top confusions: " + ", ".join(
            f"{c['true']} -> {c['pred']} ({c['count']})" for c in result.top_confusions))
    table.caption = "\n".join(captions) or None
    return table


def _without_test_images(result: EvalResult) -> str:
    """The classes with no test image, named (", "-joined), or ""."""
    return ", ".join(r["class"] for r in result.per_class if r["support"] == 0)


register(EvalResult, table=table, markdown=markdown)
