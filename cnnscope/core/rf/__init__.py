"""Receptive fields from the live graph.

One forward pass of a probe input records every operation as it executes (tracer.py). Every tensor
computed from the input carries, per axis (H and W), the interval [lo, hi] of input pixels that its
unit 0 sees and its jump (the input-pixel distance between neighbouring units): unit u sees
[lo + u*jump, hi + u*jump], so RF = hi - lo + 1 and the centre offset is (lo + hi) / 2 (axis.py).

  conv / pool (kernel k, stride s, padding p, dilation d; k_eff = d*(k-1) + 1):
      lo' = lo - p*jump,  hi' = hi + (k_eff - 1 - p)*jump,  jump' = jump*s
      i.e. RF' = RF + (k_eff - 1)*jump and centre' = centre + ((k_eff - 1)/2 - p)*jump.
  merges (add, mul, cat, stack, where, gates ...): the union of the inputs' intervals (for aligned
      paths the max RF); inputs with different jumps or centres are flagged as misaligned. A pooled
      input (a squeeze-excitation gate) makes the output see the whole input: its `glob` flag.
  pointwise and channel-only ops (activations, normalisation, dropout, channel slicing, Linear over
      channels): unchanged, in any layout. Normalisation statistics (BatchNorm in training,
      GroupNorm, LayerNorm) are left out, as in every conventional RF analysis.
  permutes, transposes, views and reshapes: H and W are followed wherever they go (channels-last
      blocks, H*W flattened into tokens and back, class tokens before them; layout.py,
      rearrange.py); a view that cuts them apart (windows, patches, space-to-depth) is followed
      element by element until the pieces form a grid again (scatter.py).
  strided slices x[..., a::s, b::s]: a window of one unit, stride s, offset a; pixel_unshuffle(r): a
      window k = s = r; pixel_shuffle(r): a transposed one; unfold (im2col) a sliding window whose
      blocks become tokens, fold (col2im) a transposed window: a hand-written conv is a conv.
  contractions over H or W (matmul, linear, einsum: x @ M across W, attention of queries against
      keys): the units see the whole axis ("global", the local window kept beside it).
  global pooling, means over H and W, flattening H and W with the channels: "global" (the whole
      input). The map that went into the last of them is the network's final spatial map.
  transposed convs (output unit o gets input units (o + p - t*d)/s, the taps t that make it whole):
      the units of the output do not all see the same window; Axis.phases follows the window of
      each phase o mod P exactly through later windows, merges and pads, and the RF is the largest
      (k=2 s=2 adds nothing; k=4 s=2 p=1 adds one input jump).
  interpolation (nearest, bilinear, bicubic, area; by size or factor; align_corners either way;
      antialiased downsampling by its stretched filter), adaptive pooling that does not divide its
      input: output unit o gets the windows of the input units PyTorch's index rule gives it a
      non-zero weight (resample.py): units differ (one tap or two, clamped at the border); the
      final RF is the largest, RFResult.final_range_hw and final_centre_hw give the range and the
      centre unit's. Rolls, flips, circular pads, index_select and cumsum along H or W: each unit
      its own window too, a table of the map's units (nothing beyond them; sampling.py).
  sampling at positions computed from the data (grid_sample, deformable convs): any pixel, the RF
      "global", with the window of the fixed offsets (identity grid, zero offsets) beside it.
  units that see no input (a transposed conv whose stride and dilation share a factor) are counted
      (RFResult.empty_units_hw); the centre unit is the nearest to the centre that sees the input.
An operation in none of ops.py's tables, on a tensor the final map depends on, makes the result
unknown from its layer on (RFResult.unknown, the op named): never a number, whatever it does to H
and W. The analysis runs once on the model's device, computing shapes only (trace.py).

    result = receptive_field(model, (3, 224, 224))               # the table: RFResult
    result.probe = verify_receptive_field(model, result)         # the same figures by gradient probing
    result.erf = effective_receptive_field(model, images, result)  # trained weights (Luo et al., 2016)
"""
from cnnscope.core.rf.axis import Axis
from cnnscope.core.rf.erf import effective_receptive_field, rf_box
from cnnscope.core.rf.result import EffectiveRF, Layer, Probe, RFResult, UnknownOp
from cnnscope.core.rf.trace import receptive_field
from cnnscope.core.rf.verify import verify_receptive_field

__all__ = ["Axis", "EffectiveRF", "Layer", "Probe", "RFResult", "UnknownOp", "effective_receptive_field",
           "receptive_field", "rf_box", "verify_receptive_field"]
