"""MACs of a forward pass counted the way torch.utils.flop_counter counts FLOPs, per module call.

The counting is flop_counter's: a TorchDispatchMode sees every ATen operation that runs (after
composite operations such as F.linear, einsum, tensordot or scaled_dot_product_attention decompose
into what actually computes), and an operation in flop_counter's registry (mm, addmm, bmm, baddbmm,
convolution, attention, ...) costs its formula's FLOPs; MACs = FLOPs // 2. Formulas are added
where the registry has none for an operation that is a product: the CPU attention kernel (costed by
the registry's own attention formula), nn.MultiheadAttention's inference fast path, and the vector
products mv, addmv and dot.

What is not a MAC, by the same convention as flop_counter's: operations that do at most a few
arithmetic operations per element they read or write: pointwise operations and reductions (by
their ATen tags), views and copies, operations without tensor inputs (zeros, randn), normalisation,
softmax, pooling, padding, resampling and indexing (NOT_PRODUCTS below). Any other operation may
hide products the count misses (a custom op, an ATen operation with no formula such as cdist or
an FFT), so it is named in a warning with the modules it ran in. A custom autograd Function needs
no warning: the operations inside its forward are dispatched and counted like any other.
"""
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten


def _mv_flop(mat, vec, *args, out_val=None, **kwargs) -> int:
    return 2 * mat.shape[0] * mat.shape[1]


def _addmv_flop(bias, mat, vec, *args, out_val=None, **kwargs) -> int:
    return _mv_flop(mat, vec)


def _dot_flop(a, b, *args, out_val=None, **kwargs) -> int:
    return 2 * a.shape[0]


def _multi_head_attention_flop(query, key, value, embed_dim, *args, out_val=None, **kwargs) -> int:
    """nn.MultiheadAttention's inference fast path: the q, k, v and output projections, and the
    scores and weighted sum of the attention (over all heads together, embed_dim wide)."""
    batch, q_len, k_len = query.shape[0], query.shape[1], key.shape[1]
    projections = batch * (2 * q_len + 2 * k_len) * embed_dim * embed_dim
    return 2 * (projections + 2 * batch * q_len * k_len * embed_dim)


FORMULAS = {
    **flop_registry,
    aten._scaled_dot_product_flash_attention_for_cpu: flop_registry[aten._scaled_dot_product_flash_attention],
    aten.mv: _mv_flop,
    aten.addmv: _addmv_flop,
    aten.dot: _dot_flop,
    aten._native_multi_head_attention: _multi_head_attention_flop,
}

# Operations that do at most a few arithmetic operations per element (ATen names, overload packets)
# beyond the pointwise/reduction tags and views; see the module doc.
NOT_PRODUCTS = {
    # copies, layout and indexing
    "clone", "copy_", "_to_copy", "cat", "stack", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d",
    "replication_pad1d", "replication_pad2d", "index", "index_select", "gather", "scatter", "scatter_add",
    "index_put", "index_put_", "slice_scatter", "select_scatter", "masked_scatter", "flip", "roll", "repeat",
    "im2col", "col2im", "pixel_shuffle", "pixel_unshuffle", "native_channel_shuffle", "channel_shuffle",
    "embedding", "zero_", "fill_", "new_zeros", "new_empty", "new_ones", "_unsafe_view", "lift_fresh",
    "detach", "sort", "topk", "cumsum", "nonzero", "_local_scalar_dense", "bernoulli_", "uniform_", "normal_",
    # normalisation, softmax, pooling, resampling
    "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
    "native_layer_norm", "native_group_norm", "_softmax", "_safe_softmax", "_log_softmax", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "avg_pool2d", "avg_pool3d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d",
    "adaptive_max_pool2d", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
    "_upsample_nearest_exact2d", "upsample_linear1d", "upsample_bilinear2d", "_upsample_bilinear2d_aa",
    "upsample_bicubic2d", "upsample_trilinear3d", "grid_sampler_2d",
    # what resampling decomposes into (F.interpolate's nearest and bilinear modes)
    "_unsafe_index", "_unsafe_index_put", "_unsafe_masked_index", "_unsafe_masked_index_put_accumulate",
    # elementwise activations whose ATen schema lacks the pointwise tag (the in-place forms do not
    # decompose as the out-of-place ones do)
    "hardswish", "hardswish_", "gelu", "gelu_", "mish", "mish_", "threshold", "threshold_", "rrelu_",
    "rrelu_with_noise", "rrelu_with_noise_", "softplus", "hardshrink", "softshrink", "log_sigmoid_forward",
}
_NOT_PRODUCT_TAGS = (torch.Tag.pointwise, torch.Tag.reduction, torch.Tag.inplace_view)


def is_not_product(func) -> bool:
    """True for an operation that, by the module doc's rule, does no multiply-accumulates."""
    return (func.is_view or func._overloadpacket.__name__ in NOT_PRODUCTS
            or any(tag in func.tags for tag in _NOT_PRODUCT_TAGS))


def _has_tensor(args) -> bool:
    return any(isinstance(a, torch.Tensor) or (isinstance(a, (list, tuple)) and _has_tensor(a)) for a in args)


class MacCounter(TorchDispatchMode):
    """Charges the MACs of every operation to `charge(macs)`'s current target (the innermost running
    module call, kept by the caller) and collects the operations that run uncounted:
    `uncounted[op name] = [where, ...]` with `where()` naming the running call. `observe(op name,
    args)`, when given, sees every operation first (the summary reads a convolution's geometry there)."""

    def __init__(self, charge, where, observe=None):
        super().__init__()
        self.charge, self.where, self.observe = charge, where, observe  # observe(op name, args): every op
        self.uncounted: dict[str, list] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if self.observe is not None:
            self.observe(packet.__name__, args)
        if packet not in FORMULAS:
            with self:  # as flop_counter: a composite operation is counted by what it decomposes into
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if packet in FORMULAS:
            self.charge(FORMULAS[packet](*args, **kwargs, out_val=out) // 2)
        elif _has_tensor(args) and not is_not_product(func):
            where = self.uncounted.setdefault(str(packet), [])
            if self.where() not in where:
                where.append(self.where())
        return out


def uncounted_warnings(uncounted: dict) -> list[str]:
    """One warning per uncounted operation, naming it and where it ran."""
    return [f"{op} ran uncounted in {', '.join(where[:3])}{' and others' if len(where) > 3 else ''}: "
            "flop_counter has no formula for it and it is not an elementwise, shape or normalisation "
            "operation, so its multiply-accumulates (if any) are missing from the MACs"
            for op, where in uncounted.items()]
