"""The results of the receptive-field analysis, its gradient probe and the effective RF."""
import math
from dataclasses import dataclass
from typing import Optional

from cnnscope.core.rf.axis import json_pair, show_number, show_pair


@dataclass
class Layer:
    """One spatial operation as it was called. Per-axis values are (H, W) pairs."""

    index: int
    name: str  # qualified module name, '#call' when the module runs more than once, ':op' for functional calls
    op: str
    k: tuple
    s: tuple
    d: tuple
    p: tuple
    rf_in: tuple
    jump_in: tuple
    rf_out: tuple
    jump_out: tuple
    global_in: tuple = (False, False)  # the input already sees the whole input (a global path)
    global_out: tuple = (False, False)


@dataclass(frozen=True)
class UnknownOp:
    """An operation the analysis does not know, on a map the final map depends on: the RF is unknown
    from it on (never a number). `layer`: the table row it would have been."""

    op: str
    where: str  # the module that ran it
    layer: int
    detail: str  # what it did to the map's shape

    def describe(self) -> str:
        return f"unknown from layer {self.layer} ({self.where}) on: operation {self.op!r} {self.detail}"

    def to_json(self) -> dict:
        return {"layer": self.layer, "name": self.where, "op": self.op, "detail": self.detail}


@dataclass
class UnitCheck:
    """One unit of the final map probed along one axis: the input pixels (first, last) that the
    analysis says it sees (clipped to the probe input; the whole axis for a global RF), and those
    where its input gradient is nonzero."""

    axis: int  # 0: H, 1: W
    unit: int
    analysis: tuple
    probe: tuple

    @property
    def match(self):
        return self.analysis == self.probe


@dataclass
class Probe:
    """The gradient probe of `verify_receptive_field`: nonzero input-gradient extent of the final
    map's centre unit, and of the units it checked one by one (where the RF varies over the map)."""

    rf: tuple  # (H, W), in pixels
    input_size: tuple  # probe length along H (on an input of the analysed W) and along W
    clipped: bool  # the support still touched the border after growing the input
    dtype: str
    units: tuple = ()  # UnitCheck per probed unit (the centre unit's included)


@dataclass
class EffectiveRF:
    """Mean |d centre unit / d input| over images (Luo et al., 2016)."""

    heatmap: object  # numpy (H, W), sums to 1
    centre: tuple  # (y, x) input pixel at the centre of the final map's centre unit
    radius95: Optional[float]  # radius (pixels) around `centre` that holds 95% of the gradient mass
    images: int
    units: tuple = ()  # the (row, col) units probed: the centre unit, or the two or four nearest the centre
    # where the images and weights came from, and the figure drawn of it (set by whoever knows)
    dataset: Optional[str] = None
    run: Optional[str] = None
    figure: Optional[str] = None

    def to_json(self) -> dict:
        return {"run": self.run, "dataset": self.dataset, "images": self.images,
                "radius95": None if self.radius95 is None else round(self.radius95, 2),
                "centre": [show_number(c) for c in self.centre], "units": [list(u) for u in self.units],
                "figure": self.figure}


@dataclass
class RFResult:
    model: str
    input_shape: tuple  # (C, H, W)
    layers: list
    final: Optional[tuple]  # (Axis H, Axis W) of the final spatial map; None when `unknown`
    final_size: Optional[tuple]  # (H, W) of the final spatial map at the probe input
    final_op: Optional[tuple]  # (index, name) of the torch call whose input is the final map; None: the output
    warnings: list
    probe: Optional[Probe] = None
    erf: Optional[EffectiveRF] = None
    final_layout: Optional[tuple] = None  # layout.Layout of the final map: where its H and W are
    size_dependent: bool = False  # the windows depend on the input's size (interpolation to a size ...)
    unknown: Optional[UnknownOp] = None  # the operation from which on the RF is unknown

    @property
    def final_range_hw(self):
        """((min, max) along H, (min, max) along W): the local windows over the units of the final map
        that see the input (they differ after upsampling, transposed convs, rolls and flips)."""
        return tuple((min(ws, default=0), max(ws, default=0))
                     for ws in (a.windows(n) for a, n in zip(self.final, self.final_size)))

    @property
    def centre_unit_hw(self):
        """The final map's centre unit, per axis: the nearest to the centre that sees the input."""
        return tuple(a.centre_unit(n) for a, n in zip(self.final, self.final_size))

    @property
    def final_centre_hw(self):
        """The local window of the final map's centre unit, per axis."""
        return tuple(0 if w is None else w[1] - w[0] + 1
                     for w in (a.unit_window(u) for a, u in zip(self.final, self.centre_unit_hw)))

    @property
    def empty_units_hw(self):
        """How many units of the final map, per axis, see no input pixel at all (a transposed conv
        with stride and dilation sharing a factor leaves such units)."""
        return tuple(a.empty_units(n) for a, n in zip(self.final, self.final_size))

    @property
    def data_dependent_hw(self):
        """Do the units read positions computed from the data (grid_sample, deformable convs)?"""
        return tuple(a.sampled for a in self.final)

    @property
    def varies(self) -> bool:
        return any(lo != hi for lo, hi in self.final_range_hw)

    @property
    def final_rf_hw(self):
        return tuple(a.rf for a in self.final)

    @property
    def final_window_hw(self):
        """The local window, leaving out global paths (squeeze-excitation ...) and data-dependent
        positions (the window of the fixed offsets)."""
        return tuple(a.window for a in self.final)

    @property
    def final_jump_hw(self):
        return tuple(a.jump for a in self.final)

    @property
    def final_rf(self):
        """55, "55x57" (H x W), "global" or "unknown"."""
        return "unknown" if self.unknown else show_pair(self.final_rf_hw)

    @property
    def final_jump(self):
        return "unknown" if self.unknown else show_pair(self.final_jump_hw)

    @property
    def coverage(self) -> Optional[float]:
        """Share of the input area that the final map's RF box can cover (None: unknown)."""
        if self.unknown:
            return None
        return math.prod(min(1.0, rf / n) for rf, n in zip(self.final_rf_hw, self.input_shape[1:]))

    @property
    def first_exceeding(self) -> Optional[Layer]:
        """The first layer whose RF exceeds the input along H or W."""
        size = self.input_shape[1:]
        return next((l for l in self.layers
                     if any(g or r > n for r, g, n in zip(l.rf_out, l.global_out, size))), None)

    @property
    def probe_rf(self):
        """The gradient probe's RF, shown like final_rf (None when it did not run)."""
        return None if self.probe is None else show_pair(self.probe.rf)

    @property
    def verified(self) -> Optional[bool]:
        """Does the gradient probe agree with the analysis? None when it did not run."""
        if self.probe is None:
            return None
        return all(check.match for check in self.probe.units)

    def to_json(self) -> dict:
        """Keys: model; input [C, H, W]; final_rf and final_jump (a number when H and W agree,
        "HxW" otherwise, "global" for a map that sees the whole input, "unknown" from an operation
        the analysis does not know on); unknown_from ({layer, name, op, detail}: that operation, or
        null); final_rf_hw, final_jump_hw ([H, W]); final_window_hw ([H, W] local window, leaving out
        global paths such as squeeze-excitation gates, and for data-dependent sampling the window of
        the fixed offsets); data_dependent_hw ([H, W]: the units read positions computed from the
        data, grid_sample or deformable convs, so their RF is global); final_map ([H, W] size of the
        final spatial map); varies (do the units of the final map see windows of different sizes:
        after upsampling, transposed convs, rolls, flips, uneven adaptive pooling);
        final_window_range_hw ([[min, max] along H, [min, max] along W] over its units that see the
        input); final_window_centre_hw (the centre unit's: the unit nearest the centre that sees the
        input); empty_units_hw ([H, W]: units that see no input at all); coverage (0..1); first_exceeding
        (layer name or null); layers: [{index, name, op, k, s, d, p, rf_in, jump_in, rf_out, jump_out,
        global_in, global_out}], each an [H, W] pair (rf_* are local windows; global_* say whether a
        global path adds the whole input); warnings (list of strings). When unknown, the keys of the
        final map are null. With a probe: verify {probe_rf, probe_rf_hw, probe_input, match, clipped,
        units: [{axis, unit, analysis [first, last], probe [first, last]}]}; with an effective RF: erf
        {run, dataset, images, radius95, centre, figure}."""
        first = self.first_exceeding
        out = {"model": self.model, "input": list(self.input_shape), "final_rf": self.final_rf,
               "final_jump": self.final_jump, "unknown_from": self.unknown.to_json() if self.unknown else None}
        out.update(self._final_json())
        out.update({"first_exceeding": first.name if first else None,
                    "layers": [_layer_json(l) for l in self.layers], "warnings": list(self.warnings)})
        if self.probe is not None:
            out["verify"] = {"probe_rf": self.probe_rf, "probe_rf_hw": list(self.probe.rf),
                             "probe_input": list(self.probe.input_size), "match": self.verified,
                             "clipped": self.probe.clipped,
                             "units": [{"axis": "HW"[c.axis], "unit": c.unit, "analysis": json_pair(c.analysis),
                                        "probe": list(c.probe)} for c in self.probe.units]}
        if self.erf is not None:
            out["erf"] = self.erf.to_json()
        return out

    def _final_json(self) -> dict:
        keys = ("final_rf_hw", "final_jump_hw", "final_window_hw", "data_dependent_hw", "final_map", "varies",
                "final_window_range_hw", "final_window_centre_hw", "empty_units_hw", "coverage")
        if self.unknown:
            return dict.fromkeys(keys)
        return dict(zip(keys, (json_pair(self.final_rf_hw), json_pair(self.final_jump_hw),
                               json_pair(self.final_window_hw), list(self.data_dependent_hw), list(self.final_size),
                               self.varies, [json_pair(r) for r in self.final_range_hw],
                               json_pair(self.final_centre_hw), list(self.empty_units_hw), round(self.coverage, 4))))


def _layer_json(layer: Layer) -> dict:
    return {"index": layer.index, "name": layer.name, "op": layer.op,
            **{key: json_pair(getattr(layer, key)) for key in
               ("k", "s", "d", "p", "rf_in", "jump_in", "rf_out", "jump_out")},
            "global_in": list(layer.global_in), "global_out": list(layer.global_out)}
