"""The classification report of an EvalResult: a rich table and markdown (also the run folder's
classification_report.md)."""
from cnnscope.core.metrics import EvalResult
from cnnscope.render import register
from cnnscope.render.numbers import count, fixed, plural
from cnnscope.render.tables import Section, sections_table


def _averages(result: EvalResult):
    return (("macro avg", result.macro_avg), ("weighted avg", result.weighted_avg))


def _rows(result: EvalResult) -> list:
    rows = [[r["class"], fixed(r["precision"]), fixed(r["recall"]), fixed(r["f1"]), count(r["support"])]
            for r in result.per_class]
    return rows + [[name, fixed(avg["precision"]), fixed(avg["recall"]), fixed(avg["f1"]), count(result.num_test)]
                   for name, avg in _averages(result)]


def _headline(result: EvalResult) -> str:
    return (f"Test accuracy {result.test_acc:.2f}% ({plural(result.num_test, 'image')}), "
            f"test loss {result.test_loss:.4f}")


def markdown(result: EvalResult, title=None) -> str:
    lines = [_headline(result), "",
             "| class | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {row[0] if i < len(result.per_class) else f'**{row[0]}**'} | " + " | ".join(row[1:]) + " |"
              for i, row in enumerate(_rows(result))]
    absent = _without_test_images(result)
    if absent:
        lines += ["", f"No test images of {absent}: recall and F1 undefined (shown as 0)."]
    if result.top_confusions:
        lines += ["", "Top confusions (true -> predicted):", ""]
        lines += [f"- {c['true']} -> {c['pred']}: {count(c['count'])} ({100 * c['rate']:.1f}% of {c['true']})"
                  for c in result.top_confusions]
    return "\n".join(lines) + "\n"


def table(result: EvalResult, title=None):
    """The classification report, the headline numbers in its title; the classes without test images
    and the top confusions under it."""
    absent = _without_test_images(result)
    notes = [f"No test images of {absent}."] if absent else []
    if result.top_confusions:
        notes.append("Top confusions (true -> predicted): " + ", ".join(
            f"{c['true']} -> {c['pred']} ({count(c['count'])})" for c in result.top_confusions))
    return sections_table([Section(title or f"{result.run}: {_headline(result)}",
                                   ["class", "precision", "recall", "f1", "support"], _rows(result), notes=notes)])


def _without_test_images(result: EvalResult) -> str:
    """The classes with no test image, named (", "-joined), or ""."""
    return ", ".join(r["class"] for r in result.per_class if r["support"] == 0)


register(EvalResult, table=table, markdown=markdown)
