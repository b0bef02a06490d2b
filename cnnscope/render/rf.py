"""The receptive-field table (RFResult): the seed's RF table in markdown (README-ready, a run's
rf.md) and a rich table, each followed by the final RF line, the notes and the warnings."""
from typing import Optional

from cnnscope import render
from cnnscope.core.rf import Layer, RFResult
from cnnscope.core.rf.axis import show_pair
from cnnscope.render.tables import Section, sections_table

_COLUMNS = ("#", "Layer", "k", "s", "d", "RF_in", "jump_in", "RF_out", "jump_out")


def _rf_cell(window, glob) -> str:
    """The local window, starred when the units also see the whole input through a global path."""
    return str(show_pair(window)) + ("*" if any(glob) else "")


def _cells(layer: Layer) -> list:
    return [str(layer.index), layer.name, *(str(show_pair(v)) for v in (layer.k, layer.s, layer.d)),
            _rf_cell(layer.rf_in, layer.global_in), str(show_pair(layer.jump_in)),
            _rf_cell(layer.rf_out, layer.global_out), str(show_pair(layer.jump_out))]


def _global_note(result: RFResult) -> str:
    first_global = next((l for l in result.layers if any(l.global_out)), None)
    return ("RF values marked * also see the whole input through a global path (a squeeze-excitation "
            "gate, attention, a pooled map fed back, a matmul or softmax over H or W)"
            + (f" from layer {first_global.index} on" if first_global else "")
            + f"; the local window of the final map is {show_pair(result.final_window_hw)}.")


def _varies_note(result: RFResult) -> str:
    (h_lo, h_hi), (w_lo, w_hi) = result.final_range_hw
    return (f"The RF varies over the units of the final map (after upsampling, transposed convs, rolls, flips, "
            f"uneven adaptive pooling): "
            f"local windows from {show_pair((h_lo, w_lo))} to {show_pair((h_hi, w_hi))}, "
            f"the centre unit's {show_pair(result.final_centre_hw)}; the final RF is the largest.")


def _verify_note(result: RFResult) -> str:
    p = result.probe
    verdict = "matches" if result.verified else "DOES NOT MATCH"
    differing = [c for c in p.units if not c.match]
    detail = f"; {len(p.units)} units checked one by one" if result.varies else ""
    if differing:
        detail += "; differing units: " + ", ".join(
            f"{'HW'[c.axis]} unit {c.unit}: analysis {list(c.analysis)}, probe {list(c.probe)}" for c in differing[:3])
    return (f"Verify (gradient probe, {p.dtype}, input grown to {p.input_size[0]} along H and "
            f"{p.input_size[1]} along W): RF {result.probe_rf} {verdict} the analysis ({result.final_rf})"
            + (" [the support still touched the border]" if p.clipped else "") + detail + ".")


def _erf_note(result: RFResult) -> str:
    e = result.erf
    radius = "undefined (zero gradient)" if e.radius95 is None else f"{e.radius95:.1f} px"
    return (f"Effective RF ({e.images} {e.dataset} test images of {e.run}): 95% of the gradient "
            f"mass lies within {radius} of the centre.")


def _final_notes(result: RFResult) -> list:
    """Units that see nothing, and units that sample where the data says."""
    lines = []
    if any(result.empty_units_hw):
        lines.append(f"Units of the final map that see no input at all: {result.empty_units_hw[0]} rows and "
                     f"{result.empty_units_hw[1]} columns (a transposed conv whose stride and dilation share a "
                     "factor); the centre unit is the nearest to the centre that sees the input.")
    if any(result.data_dependent_hw):
        lines.append("The units sample the map at positions computed from the data (grid_sample, a deformable "
                     "conv): they can see any pixel, so the RF is global; the window of the fixed offsets "
                     f"(identity grid, zero offsets) is {show_pair(result.final_window_hw)}.")
    return lines


def _notes(result: RFResult) -> list:
    """Plain-text lines after the table: coverage, first layer past the input, verify, ERF."""
    if result.unknown:
        return [f"RF {result.unknown.describe()}; no RF is given from there on."]
    c, h, w = result.input_shape
    first = result.first_exceeding
    lines = [f"Final map {result.final_size[0]}x{result.final_size[1]}; its RF covers "
             f"{result.coverage:.0%} of the {h}x{w} input; "
             + (f"RF exceeds the input from layer {first.index} ({first.name})." if first
                else "no layer's RF exceeds the input.")]
    if result.varies:
        lines.append(_varies_note(result))
    lines += _final_notes(result)
    if any(a.glob for a in result.final):
        lines.append(_global_note(result))
    if result.probe is not None:
        lines.append(_verify_note(result))
    if result.erf is not None:
        lines.append(_erf_note(result))
    return lines


def _markdown(result: RFResult, title: Optional[str] = None) -> str:
    """The seed's RF table (README-ready), then the final RF line, notes and warnings."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(_COLUMNS) + " |",
              "|---:|:------|:-:|:-:|:-:|-----:|--------:|-------:|---------:|"]
    lines += ["| " + " | ".join(_cells(l)) + " |" for l in result.layers]
    lines += ["", f"**Final RF:** {result.final_rf} &nbsp;&nbsp; **Final jump:** {result.final_jump}"]
    lines += ["", *(f"{note}  " for note in _notes(result))]
    if result.warnings:
        lines += ["", *(f"> warning: {w}  " for w in result.warnings)]
    return "\n".join(lines).rstrip() + "\n"


def _table(result: RFResult, title: Optional[str] = None):
    """The table laid out for the terminal's width, then the final RF, the notes and the warnings."""
    c, h, w = result.input_shape
    return sections_table([Section(
        title or f"RF: {result.model} ({h}x{w} input)", list(_COLUMNS), [_cells(layer) for layer in result.layers],
        notes=[f"Final RF: {result.final_rf}   Final jump: {result.final_jump}", *_notes(result),
               *(f"warning: {w}" for w in result.warnings)],
        drop=("jump_in", "RF_in"),
    )])


render.register(RFResult, table=_table, markdown=_markdown)
