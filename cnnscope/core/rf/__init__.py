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
  pointwise and channel-only ops (activations, normalisation, dropout, channel slicing, reshapes
      that keep H and W): unchanged. Normalisation statistics (BatchNorm in training, GroupNorm,
      LayerNorm) are left out, as in every conventional RF analysis.
  global pooling, means over H and W, flattening H and W: "global" (the whole input). The map
      that went into the last of them is the network's final spatial map.
  transposed convs (output unit o gets input units (o + p - t*d)/s, the taps t that make it whole):
      the units of the output do not all see the same window; Axis.phases follows the window of
      each phase o mod P exactly through later windows, merges and pads, and the RF is the largest
      (k=2 s=2 adds nothing; k=4 s=2 p=1 adds one input jump).
  interpolation, pixel (un)shuffle: handled as the bounding interval (their windows are not uniform
      along the map either).
An operation it does not know, on a tensor it tracks, is named in a warning, never silently
passed through.

    result = receptive_field(model, (3, 224, 224))               # the table: RFResult
    result.probe = verify_receptive_field(model, result)         # the same figure by gradient probing
    result.erf = effective_receptive_field(model, images, result)  # trained weights (Luo et al., 2016)
"""
from cnnscope.core.rf.axis import Axis
from cnnscope.core.rf.erf import effective_receptive_field, rf_box
from cnnscope.core.rf.result import EffectiveRF, Layer, Probe, RFResult
from cnnscope.core.rf.trace import receptive_field
from cnnscope.core.rf.verify import verify_receptive_field

__all__ = ["Axis", "EffectiveRF", "Layer", "Probe", "RFResult", "effective_receptive_field", "receptive_field",
           "rf_box", "verify_receptive_field"]
