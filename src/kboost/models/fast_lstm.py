"""A training-grade LSTM for the CPU: one-layer (bi)directional LSTM with a hand-written backward.

At this project's sizes (hidden 8..64, hundreds to thousands of short sequences) PyTorch's CPU
LSTM (``aten::mkldnn_rnn_layer`` and its backward) dominates a training step. This module
computes exactly what ``nn.LSTM(D, H, batch_first=True[, bidirectional=True])`` computes with
two numba kernels:

* forward: sequences go in blocks of ``BLOCK`` = 16, one per lane of a 16-float vector, so
  every vector is full whatever the sizes. Per step, one matrix-vector product with the
  concatenated ``[W_hh | W_ih]`` (16 independent FMA chains) gives both the recurrence and the
  input projection, then the gate nonlinearities (exp, sigmoid, tanh written out in vector
  instructions, no libm calls). x and the output stay in nn.LSTM's [N, L, C] layout: 16 x 16
  tiles go between rows and lane vectors by in-register transposes. For the backward it saves
  the gate activations and cell states, block-major so each work item streams contiguously.
* backward: the reverse-time recurrence from those; per step one product with
  ``[W_hh | W_ih]^T`` gives both dh_{t-1} and dx_t, and the weight gradients
  ``sum_t dG_t [1; h_{t-1}; x_t]^T`` (bias, W_hh, W_ih at once) are accumulated in registers
  over groups of steps (4 x 4 tiles of lane-wise sums), so dG is never written out.
* threads: the work items (a direction of a block forward, a fixed range of blocks backward)
  are independent; ``torch.get_num_threads()`` threads take them one at a time from an atomic
  counter. The threads are PyTorch's own OpenMP team (see :func:`_run`). Each backward range
  sums its own weight gradients and the ranges are added in order, so the gradients are the
  same bits whichever thread took which range and however many threads there are.

The kernels use explicit vector operations (``_vload``, ``_vfma``, ...: small numba intrinsics
emitting LLVM ``<16 x float>`` code) because LLVM's auto-vectorisers, left to themselves,
turned these loops into gathers and scatters or scalar code depending on details. They are
generic LLVM vectors: on a CPU without AVX-512 the code generator splits them into AVX2 or SSE
registers, still correct. Numerics: float32 throughout, exp/sigmoid/tanh within 3 ulp; values
and gradients agree with torch's to ~1e-6 relative (tests require 1e-5).

Use it through :class:`FastLSTM`, an ``nn.LSTM`` subclass (same constructor, parameters and
state_dict) that takes this path only where it applies (CPU, float32, one layer, batch-first
3-D input, biases, no projection, no PackedSequence, no autocast) and the switch is on;
everything else, CUDA included, goes to ``nn.LSTM.forward``. Switch: :func:`set_enabled`
(process-wide) or the environment variable ``KBOOST_FAST_LSTM=0`` (read on every call while
``set_enabled`` has not been called). Or call :func:`lstm` / :func:`lstm_forward` directly.
The kernels compile on first use (about 10 s, then numba's on-disk cache).
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.compiler import CompilerBase, DefaultPassBuilder
from numba.extending import intrinsic, models, register_model
from torch import nn

__all__ = ["FastLSTM", "FastLSTMFunction", "lstm", "lstm_forward", "applies", "enabled", "set_enabled"]

BLOCK = 16  # sequences per block = lanes per vector (16 float32 = one AVX-512 register)

_ENV = "KBOOST_FAST_LSTM"
_enabled: bool | None = None  # None: follow the environment variable


def set_enabled(flag: bool | None) -> None:
    """Turn the fast path on or off for the whole process (``None``: back to the environment
    variable ``KBOOST_FAST_LSTM``, default on)."""
    global _enabled
    _enabled = None if flag is None else bool(flag)


def enabled() -> bool:
    """Whether :class:`FastLSTM` takes the fast path where it applies."""
    if _enabled is not None:
        return _enabled
    return os.environ.get(_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


# ------------------------------------------------------------------------ vector intrinsics
_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_VF = ir.VectorType(_F32, BLOCK)
_VI = ir.VectorType(_I32, BLOCK)


class _Float32xBlock(types.Type):
    """numba type of an LLVM ``<BLOCK x float>`` value."""

    def __init__(self):
        super().__init__(name=f"float32x{BLOCK}")


_vec = _Float32xBlock()


@register_model(_Float32xBlock)
class _Float32xBlockModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VF)


def _const(value: float):
    return ir.Constant(_VF, [float(np.float32(value))] * BLOCK)


def _splat(builder, scalar):
    v = builder.insert_element(ir.Constant(_VF, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_VF, ir.Undefined), ir.Constant(_VI, [0] * BLOCK))


def _fma(builder, a, b, c):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF, _VF, _VF]),
                                        f"llvm.fma.v{BLOCK}f32")
    return builder.call(fn, [a, b, c])


def _float_array(a) -> bool:
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.layout == "C"


def _element_pointer(context, builder, arrty, arr, idxty, idx):
    """Address of flat element ``idx`` of a C-contiguous array (no bounds or sign checks)."""
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(data, [context.cast(builder, idx, idxty, types.intp)])


def _array_read(emit, doc: str):
    """An intrinsic ``f(arr, idx)`` on a C-contiguous float32 array that returns a vector built by
    ``emit(builder, pointer to flat element idx)``."""
    @intrinsic
    def read(typingctx, arr, idx):
        if not (_float_array(arr) and isinstance(idx, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            return emit(builder, _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1]))
        return _vec(arr, idx), codegen
    read.__doc__ = doc
    return read


_vload = _array_read(lambda builder, ptr: builder.load(builder.bitcast(ptr, _VF.as_pointer()), align=4),
                     "Elements idx .. idx + BLOCK - 1 (flat index) of a C-contiguous float32 array.")
_vbcast = _array_read(lambda builder, ptr: _splat(builder, builder.load(ptr, align=4)),
                      "Flat element ``idx`` of a C-contiguous float32 array, in every lane.")


@intrinsic
def _vstore(typingctx, arr, idx, v):
    """Store a vector to elements idx .. idx + BLOCK - 1 (flat index)."""
    if not (_float_array(arr) and isinstance(idx, types.Integer) and v == _vec):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        builder.store(args[2], builder.bitcast(ptr, _VF.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(arr, idx, v), codegen


@intrinsic
def _vsplat(typingctx, x):
    """A scalar in every lane."""
    if not isinstance(x, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.float32))
    return _vec(x), codegen


def _binary(op):
    @intrinsic
    def fn(typingctx, a, b):
        if not (a == _vec and b == _vec):
            return None

        def codegen(context, builder, sig, args):
            return op(builder, *args)
        return _vec(a, b), codegen
    return fn


_vadd = _binary(lambda b, x, y: b.fadd(x, y))
_vsub = _binary(lambda b, x, y: b.fsub(x, y))
_vmul = _binary(lambda b, x, y: b.fmul(x, y))
_vdiv = _binary(lambda b, x, y: b.fdiv(x, y))  # (vdivps: measured faster here than rcp14 + Newton)


@intrinsic
def _vfma(typingctx, a, b, c):
    """a * b + c, fused (one rounding)."""
    if not (a == _vec and b == _vec and c == _vec):
        return None

    def codegen(context, builder, sig, args):
        return _fma(builder, *args)
    return _vec(a, b, c), codegen


@intrinsic
def _vzero(typingctx):
    def codegen(context, builder, sig, args):
        return _const(0.0)
    return _vec(), codegen


@intrinsic
def _vselect_lt(typingctx, a, b, x, y):
    """x where a < b, else y (lane-wise)."""
    if not all(t == _vec for t in (a, b, x, y)):
        return None

    def codegen(context, builder, sig, args):
        return builder.select(builder.fcmp_ordered("<", args[0], args[1]), args[2], args[3])
    return _vec(a, b, x, y), codegen


def _unary_intrinsic(builder, name, value):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF]), f"llvm.{name}.v{BLOCK}f32")
    return builder.call(fn, [value])


@intrinsic
def _vexp(typingctx, a):
    """exp(a) lane-wise: 2^k e^r with k = rint(a / ln 2), |r| <= ln2 / 2 (Cody-Waite reduction
    with FMAs) and a degree-7 Taylor polynomial: relative error below 1e-8 plus float32
    rounding; a clamped to [-87, 88] (no overflow to inf, no denormals)."""
    if a != _vec:
        return None

    def codegen(context, builder, sig, args):
        b = builder
        lo, hi = _const(-87.0), _const(88.0)
        x = args[0]
        x = b.select(b.fcmp_ordered("<", x, lo), lo, x)
        x = b.select(b.fcmp_ordered(">", x, hi), hi, x)
        k = _unary_intrinsic(b, "rint", b.fmul(x, _const(1.4426950408889634)))
        r = _fma(b, k, _const(-0.693359375), x)  # ln 2 split so that k * hi is exact
        r = _fma(b, k, _const(2.12194440e-4), r)
        p = _fma(b, r, _const(1.0 / 40320), _const(1.0 / 5040))
        for coefficient in (1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):
            p = _fma(b, r, p, _const(coefficient))
        n = b.fptosi(k, _VI)
        bits = b.shl(b.add(n, ir.Constant(_VI, [127] * BLOCK)), ir.Constant(_VI, [23] * BLOCK))
        return b.fmul(p, b.bitcast(bits, _VF))
    return _vec(a), codegen


_I64 = ir.IntType(64)
_VI64 = ir.VectorType(_I64, BLOCK)
_VMASK = ir.VectorType(ir.IntType(1), BLOCK)
_LANES = ir.Constant(_VI64, list(range(BLOCK)))


def _splat64(builder, scalar):
    v = builder.insert_element(ir.Constant(_VI64, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_VI64, ir.Undefined), ir.Constant(_VI, [0] * BLOCK))


def _transpose16(builder, rows):
    """In-register transpose of 16 vectors of 16 lanes (4 stages of 16 two-source shuffles)."""
    rows = list(rows)
    for h in (8, 4, 2, 1):
        first = [c if c & h == 0 else BLOCK + c - h for c in range(BLOCK)]
        second = [c + h if c & h == 0 else BLOCK + c for c in range(BLOCK)]
        for r in range(BLOCK):
            if r & h:
                continue
            a, b = rows[r], rows[r + h]
            rows[r] = builder.shuffle_vector(a, b, ir.Constant(_VI, first))
            rows[r + h] = builder.shuffle_vector(a, b, ir.Constant(_VI, second))
    return rows


def _row_masks(context, builder, sig, args, rows_at, cols_at):
    """Per row b < 16: the lane mask (lane < cols) if b < rows, else all false."""
    rows = context.cast(builder, args[rows_at], sig.args[rows_at], types.int64)
    cols = context.cast(builder, args[cols_at], sig.args[cols_at], types.int64)
    lane_mask = builder.icmp_signed("<", _LANES, _splat64(builder, cols))
    none = ir.Constant(_VMASK, [0] * BLOCK)
    return [builder.select(builder.icmp_signed("<", ir.Constant(_I64, b), rows), lane_mask, none) for b in range(BLOCK)]


def _masked_load(builder, ptr, mask):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF.as_pointer(), _I32, _VMASK, _VF]),
                                        f"llvm.masked.load.v{BLOCK}f32.p0")
    return builder.call(fn, [builder.bitcast(ptr, _VF.as_pointer()), ir.Constant(_I32, 4), mask, _const(0.0)])


def _masked_store(builder, value, ptr, mask):
    fn = cgutils.get_or_insert_function(builder.module,
                                        ir.FunctionType(ir.VoidType(), [_VF, _VF.as_pointer(), _I32, _VMASK]),
                                        f"llvm.masked.store.v{BLOCK}f32.p0")
    builder.call(fn, [value, builder.bitcast(ptr, _VF.as_pointer()), ir.Constant(_I32, 4), mask])


def _integer_args(*ts) -> bool:
    return all(isinstance(t, types.Integer) for t in ts)


@intrinsic
def _load_transposed(typingctx, src, base, stride, rows, cols, dst, dst_base, dst_stride):
    """Transpose a 16 x 16 tile into lane vectors: row b (b < rows) of the tile is
    src[base + b * stride + c] for c < cols (other rows and columns read as 0); vector c of
    the result (lane b = that element) goes to dst[dst_base + c * dst_stride ..] for all 16 c
    (dst must have room for the 16 vectors; those past cols are zeros)."""
    if not (_float_array(src) and _float_array(dst)
            and _integer_args(base, stride, rows, cols, dst_base, dst_stride)):
        return None

    def codegen(context, builder, sig, args):
        start = _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        stride = context.cast(builder, args[2], sig.args[2], types.int64)
        masks = _row_masks(context, builder, sig, args, 3, 4)
        tile = [_masked_load(builder, builder.gep(start, [builder.mul(stride, ir.Constant(_I64, b))]), masks[b])
                for b in range(BLOCK)]
        out = _element_pointer(context, builder, sig.args[5], args[5], sig.args[6], args[6])
        out_stride = context.cast(builder, args[7], sig.args[7], types.int64)
        for c, v in enumerate(_transpose16(builder, tile)):
            ptr = builder.gep(out, [builder.mul(out_stride, ir.Constant(_I64, c))])
            builder.store(v, builder.bitcast(ptr, _VF.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(src, base, stride, rows, cols, dst, dst_base, dst_stride), codegen


def _make_store_transposed(add: bool):
    @intrinsic
    def store(typingctx, src, src_base, dst, base, stride, rows, cols):
        if not (_float_array(src) and _float_array(dst) and _integer_args(src_base, base, stride, rows, cols)):
            return None

        def codegen(context, builder, sig, args):
            inp = _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            tile = [builder.load(builder.bitcast(builder.gep(inp, [ir.Constant(_I64, c * BLOCK)]), _VF.as_pointer()),
                                 align=4) for c in range(BLOCK)]
            start = _element_pointer(context, builder, sig.args[2], args[2], sig.args[3], args[3])
            stride = context.cast(builder, args[4], sig.args[4], types.int64)
            masks = _row_masks(context, builder, sig, args, 5, 6)
            for b, v in enumerate(_transpose16(builder, tile)):
                ptr = builder.gep(start, [builder.mul(stride, ir.Constant(_I64, b))])
                if add:
                    v = builder.fadd(v, _masked_load(builder, ptr, masks[b]))
                _masked_store(builder, v, ptr, masks[b])
            return context.get_dummy_value()
        return types.none(src, src_base, dst, base, stride, rows, cols), codegen
    return store


# The inverse of _load_transposed: lane vectors src[src_base + c * BLOCK ..] (c < 16) are
# transposed and row b (b < rows) written to (or added to) dst[base + b * stride + c], c < cols.
_store_transposed = _make_store_transposed(False)
_add_transposed = _make_store_transposed(True)


def _shuffle_add(builder, a, b, lo, hi):
    mask = lambda lanes: ir.Constant(_VI, lanes)  # noqa: E731
    return builder.fadd(builder.shuffle_vector(a, b, mask(lo)), builder.shuffle_vector(a, b, mask(hi)))


@intrinsic
def _vreduce16(typingctx, v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15):
    """16 vectors -> one whose lane i is the sum of the lanes of vector i (a shuffle tree:
    15 x (2 shuffles + 1 add) instead of 16 separate horizontal sums)."""
    vectors = (v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15)
    if BLOCK != 16 or any(v != _vec for v in vectors):
        return None

    def codegen(context, builder, sig, args):
        level = list(args)
        # each level halves the vectors: lanes of a vector pair are folded pairwise, keeping
        # every source vector's partial sums in adjacent lanes and the vectors in order
        for width in (8, 4, 2, 1):
            lo, hi = [], []
            for base in range(0, 32, 2 * width):
                lo += list(range(base, base + width))
                hi += list(range(base + width, base + 2 * width))
            level = [_shuffle_add(builder, level[i], level[i + 1], lo, hi) for i in range(0, len(level), 2)]
        return level[0]
    return _vec(*vectors), codegen


@intrinsic
def _next_item(typingctx, counter):
    """Atomically fetch-and-increment counter[0] (an int64 array): the threads that share a
    kernel call take work items one at a time, so none waits on a slower one."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        ptr = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.atomic_rmw("add", ptr, ir.Constant(_I64, 1), "monotonic")
    return types.int64(counter), codegen


# ------------------------------------------------------------------------ vector math
class _NoAliasCompiler(CompilerBase):
    """numba's nopython pipeline with array arguments marked ``noalias`` (every kernel below
    gets distinct buffers), so LLVM may reorder their loads and stores freely."""

    def define_pipelines(self):
        self.state.flags.noalias = True
        return [DefaultPassBuilder.define_nopython_pipeline(self.state)]


_kernel = njit(cache=True, nogil=True, error_model="numpy", pipeline_class=_NoAliasCompiler)
_inline = njit(cache=True, nogil=True, error_model="numpy", inline="always")


@_inline
def _vsigmoid(x):
    one = _vsplat(np.float32(1.0))
    return _vdiv(one, _vadd(one, _vexp(_vsub(_vzero(), x))))


@_inline
def _vtanh(x):
    """tanh to a few float32 ulp: Cephes' odd polynomial for |x| < 0.625, else
    1 - 2 / (1 + e^2x) (exact saturation at +-1)."""
    z = _vmul(x, x)
    p = _vfma(_vsplat(np.float32(-5.70498872745e-3)), z, _vsplat(np.float32(2.06390887954e-2)))
    p = _vfma(p, z, _vsplat(np.float32(-5.37397155531e-2)))
    p = _vfma(p, z, _vsplat(np.float32(1.33314422036e-1)))
    p = _vfma(p, z, _vsplat(np.float32(-3.33332819422e-1)))
    small = _vfma(_vmul(x, z), p, x)
    one = _vsplat(np.float32(1.0))
    large = _vsub(one, _vdiv(_vsplat(np.float32(2.0)), _vadd(one, _vexp(_vadd(x, x)))))
    return _vselect_lt(z, _vsplat(np.float32(0.390625)), small, large)


@_inline
def _matvec(a, base, ldc, v, vbase, vstride, out, rows, cols):
    """out[r] = sum_c a[base + c * ldc + r] * v[c] for r < rows, where v[c] and out[r] are
    vectors (BLOCK lanes) at flat offsets vbase + c * vstride and r * BLOCK. Sixteen output
    rows at a time (independent FMA chains, enough to hide the FMA latency), then 4, then 1."""
    r = 0
    while r + 16 <= rows:
        a0 = _vzero(); a1 = _vzero(); a2 = _vzero(); a3 = _vzero()  # noqa: E702
        a4 = _vzero(); a5 = _vzero(); a6 = _vzero(); a7 = _vzero()  # noqa: E702
        a8 = _vzero(); a9 = _vzero(); a10 = _vzero(); a11 = _vzero()  # noqa: E702
        a12 = _vzero(); a13 = _vzero(); a14 = _vzero(); a15 = _vzero()  # noqa: E702
        for c in range(cols):
            x = _vload(v, vbase + c * vstride)
            q = base + c * ldc + r
            a0 = _vfma(_vbcast(a, q), x, a0)
            a1 = _vfma(_vbcast(a, q + 1), x, a1)
            a2 = _vfma(_vbcast(a, q + 2), x, a2)
            a3 = _vfma(_vbcast(a, q + 3), x, a3)
            a4 = _vfma(_vbcast(a, q + 4), x, a4)
            a5 = _vfma(_vbcast(a, q + 5), x, a5)
            a6 = _vfma(_vbcast(a, q + 6), x, a6)
            a7 = _vfma(_vbcast(a, q + 7), x, a7)
            a8 = _vfma(_vbcast(a, q + 8), x, a8)
            a9 = _vfma(_vbcast(a, q + 9), x, a9)
            a10 = _vfma(_vbcast(a, q + 10), x, a10)
            a11 = _vfma(_vbcast(a, q + 11), x, a11)
            a12 = _vfma(_vbcast(a, q + 12), x, a12)
            a13 = _vfma(_vbcast(a, q + 13), x, a13)
            a14 = _vfma(_vbcast(a, q + 14), x, a14)
            a15 = _vfma(_vbcast(a, q + 15), x, a15)
        o = r * BLOCK
        _vstore(out, o, a0); _vstore(out, o + 16, a1); _vstore(out, o + 32, a2)  # noqa: E702
        _vstore(out, o + 48, a3); _vstore(out, o + 64, a4); _vstore(out, o + 80, a5)  # noqa: E702
        _vstore(out, o + 96, a6); _vstore(out, o + 112, a7); _vstore(out, o + 128, a8)  # noqa: E702
        _vstore(out, o + 144, a9); _vstore(out, o + 160, a10); _vstore(out, o + 176, a11)  # noqa: E702
        _vstore(out, o + 192, a12); _vstore(out, o + 208, a13); _vstore(out, o + 224, a14)  # noqa: E702
        _vstore(out, o + 240, a15)
        r += 16
    while r + 4 <= rows:
        a0 = _vzero(); a1 = _vzero(); a2 = _vzero(); a3 = _vzero()  # noqa: E702
        for c in range(cols):
            x = _vload(v, vbase + c * vstride)
            q = base + c * ldc + r
            a0 = _vfma(_vbcast(a, q), x, a0)
            a1 = _vfma(_vbcast(a, q + 1), x, a1)
            a2 = _vfma(_vbcast(a, q + 2), x, a2)
            a3 = _vfma(_vbcast(a, q + 3), x, a3)
        o = r * BLOCK
        _vstore(out, o, a0); _vstore(out, o + 16, a1); _vstore(out, o + 32, a2)  # noqa: E702
        _vstore(out, o + 48, a3)
        r += 4
    while r < rows:
        a0 = _vzero()
        for c in range(cols):
            a0 = _vfma(_vbcast(a, base + c * ldc + r), _vload(v, vbase + c * vstride), a0)
        _vstore(out, r * BLOCK, a0)
        r += 1


# ------------------------------------------------------------------------ kernels
# Sequences go in blocks of BLOCK, sequence k * BLOCK + b of block k in vector lane b (the
# last block's missing sequences are masked off). The kernels read and write the caller's
# arrays in their own layouts ([N, L, C]: x, the output, its gradient, dx), moving 16 x 16
# tiles between rows and lane vectors with in-register transposes; what only the backward
# reads is kept block-major, so a work item streams through contiguous memory:
#   acts  [dirs, K, L, 4H, BLOCK]   gate activations i, f, g, o
#   cells [dirs, K, L, H, BLOCK]    c_t
#   h, c  [dirs, K, H, BLOCK]       state: initial in, final out (in place)
# Weights: w_t [dirs, H + D, 4H] = [W_hh | W_ih]^T (forward), w [dirs, 4H, H + D] (backward),
# bias [dirs * 4H] = b_ih + b_hh; rev[d]: direction d runs backwards in time. Per step, one
# matrix-vector product with [W_hh | W_ih] does both the recurrence and the input projection
# (forward), or both dh_{t-1} and dx_t (backward). Each thread sharing a call runs the kernel
# with its index ``share``; the threads take the work items 0 .. items - 1 one at a time from
# ``counter`` (see _run).
GROUP = 16  # backward steps per update of the weight-gradient accumulators
GRADIENT_RANGES = 8  # backward work items: fixed ranges of blocks, each summing its own weight gradients


@_inline
def _copy_vectors(src, src_base, dst, dst_base, count):
    for i in range(count):
        _vstore(dst, dst_base + i * BLOCK, _vload(src, src_base + i * BLOCK))


@_kernel
def _forward_kernel(x, w_t, bias, rev, h, c, out, acts, cells, save, share, counter, items):
    """One work item per direction d and block k: item = d * blocks + k."""
    n_seq, steps, n_in = x.shape
    n_out = out.shape[2]
    dirs, width, four_h = w_t.shape
    hidden = four_h // 4
    blocks = h.shape[1]
    item = _next_item(counter)
    while item < items:
        d = item // blocks
        k = item - d * blocks
        valid = min(BLOCK, n_seq - k * BLOCK)
        wbase = d * width * four_h
        sbase = item * hidden * BLOCK  # this item's state in h and c
        # [h_{t-1}; x_t] as vectors (and room for a partial tile of x)
        xh = np.zeros((hidden + (n_in + BLOCK - 1) // BLOCK * BLOCK) * BLOCK, dtype=np.float32)
        cl = np.empty(hidden * BLOCK, dtype=np.float32)  # c_{t-1}
        pre = np.empty(four_h * BLOCK, dtype=np.float32)  # W_hh h_{t-1} + W_ih x_t
        _copy_vectors(h, sbase, xh, 0, hidden)
        _copy_vectors(c, sbase, cl, 0, hidden)
        for s in range(steps):
            t = steps - 1 - s if rev[d] else s
            row = k * BLOCK * steps + t  # (row index of sequence k * BLOCK at time t)
            for ch in range(0, n_in, BLOCK):
                _load_transposed(x, row * n_in + ch, steps * n_in, valid, min(BLOCK, n_in - ch),
                                 xh, (hidden + ch) * BLOCK, BLOCK)
            _matvec(w_t, wbase, four_h, xh, 0, BLOCK, pre, four_h, width)
            step = (item * steps + t) * BLOCK  # (offset in acts and cells) / channels
            for i in range(hidden):
                gi = d * four_h + i  # bias of the gates i, f, g, o of unit i
                ig = _vsigmoid(_vadd(_vload(pre, i * BLOCK), _vbcast(bias, gi)))
                fg = _vsigmoid(_vadd(_vload(pre, (hidden + i) * BLOCK), _vbcast(bias, gi + hidden)))
                gg = _vtanh(_vadd(_vload(pre, (2 * hidden + i) * BLOCK), _vbcast(bias, gi + 2 * hidden)))
                og = _vsigmoid(_vadd(_vload(pre, (3 * hidden + i) * BLOCK), _vbcast(bias, gi + 3 * hidden)))
                cc = _vfma(fg, _vload(cl, i * BLOCK), _vmul(ig, gg))
                if save:
                    a = step * four_h + i * BLOCK
                    _vstore(acts, a, ig)
                    _vstore(acts, a + hidden * BLOCK, fg)
                    _vstore(acts, a + 2 * hidden * BLOCK, gg)
                    _vstore(acts, a + 3 * hidden * BLOCK, og)
                    _vstore(cells, step * hidden + i * BLOCK, cc)
                _vstore(cl, i * BLOCK, cc)
                _vstore(xh, i * BLOCK, _vmul(og, _vtanh(cc)))
            for ch in range(0, hidden, BLOCK):
                _store_transposed(xh, ch * BLOCK, out, row * n_out + d * hidden + ch, steps * n_out, valid,
                                  min(BLOCK, hidden - ch))
        _copy_vectors(xh, 0, h, sbase, hidden)
        _copy_vectors(cl, 0, c, sbase, hidden)
        item = _next_item(counter)


@_inline
def _accumulate(acc, base, g, z, count, rows, cols):
    """acc[base + ((j // 4) * (cols // 4) + r // 4) * 16 + (j % 4) * 4 + r % 4] +=
    sum_{s < count, lanes} g[j, s] * z[r, s] for the rings g [rows, GROUP, BLOCK] and
    z [cols, GROUP, BLOCK] (flat); rows and cols divisible by 4. Tiles of 4 x 4 lane-wise
    accumulators, each streaming over 4 + 4 contiguous ring rows, then summed over the lanes
    (so acc holds 4H x cols scalars, small enough for the cache)."""
    stride = GROUP * BLOCK
    for j in range(0, rows, 4):
        g0b = j * stride
        for r in range(0, cols, 4):
            a00 = _vzero(); a01 = _vzero(); a02 = _vzero(); a03 = _vzero()  # noqa: E702
            a10 = _vzero(); a11 = _vzero(); a12 = _vzero(); a13 = _vzero()  # noqa: E702
            a20 = _vzero(); a21 = _vzero(); a22 = _vzero(); a23 = _vzero()  # noqa: E702
            a30 = _vzero(); a31 = _vzero(); a32 = _vzero(); a33 = _vzero()  # noqa: E702
            z0b = r * stride
            for s in range(count):
                gb = g0b + s * BLOCK
                zb = z0b + s * BLOCK
                g0 = _vload(g, gb); g1 = _vload(g, gb + stride); g2 = _vload(g, gb + 2 * stride); g3 = _vload(g, gb + 3 * stride)  # noqa: E702,E501
                z0 = _vload(z, zb); z1 = _vload(z, zb + stride); z2 = _vload(z, zb + 2 * stride); z3 = _vload(z, zb + 3 * stride)  # noqa: E702,E501
                a00 = _vfma(g0, z0, a00); a01 = _vfma(g0, z1, a01); a02 = _vfma(g0, z2, a02); a03 = _vfma(g0, z3, a03)  # noqa: E702,E501
                a10 = _vfma(g1, z0, a10); a11 = _vfma(g1, z1, a11); a12 = _vfma(g1, z2, a12); a13 = _vfma(g1, z3, a13)  # noqa: E702,E501
                a20 = _vfma(g2, z0, a20); a21 = _vfma(g2, z1, a21); a22 = _vfma(g2, z2, a22); a23 = _vfma(g2, z3, a23)  # noqa: E702,E501
                a30 = _vfma(g3, z0, a30); a31 = _vfma(g3, z1, a31); a32 = _vfma(g3, z2, a32); a33 = _vfma(g3, z3, a33)  # noqa: E702,E501
            o = base + ((j // 4) * (cols // 4) + r // 4) * 16
            total = _vreduce16(a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33)
            _vstore(acc, o, _vadd(_vload(acc, o), total))


@_kernel
def _backward_kernel(x, out, h0, acts, cells, c0, w, rev, d_out, dh, dc, dx, acc, share, counter, items):
    """Reverse-time recurrence; work item r is a fixed range of blocks k (both directions of a
    block one after the other, so that they add their shares to dx without a race). x, out:
    the forward's input and output; h0, c0 [dirs, K, H, BLOCK]: initial state; acts, cells: saved by the
    forward; d_out: gradient of the output; dh, dc: gradient of the final state in, of the
    initial state out (in place); dx: zeros in, the input gradient out; acc [items, dirs, H,
    R / 4, 16]: acc[r] the sums (over item r's blocks) of dG_t [1; h_{t-1}; x_t; 0...]^T in 4 x 4 tiles (R = 1 + H
    + D rounded up to a multiple of 4), i.e. of the gradients of [b | W_hh | W_ih] (added to)."""
    n_seq, steps, n_in = x.shape
    n_out = out.shape[2]
    dirs, four_h, width = w.shape
    hidden = four_h // 4
    blocks = dh.shape[1]
    cols = (width + 4) // 4 * 4  # [1; h; x], zero padded to whole 4 x 4 tiles
    h_pad = (hidden + BLOCK - 1) // BLOCK * BLOCK
    x_pad = (n_in + BLOCK - 1) // BLOCK * BLOCK
    zs = GROUP * BLOCK  # the rings' channel stride
    r = _next_item(counter)
    while r < items:
        for k in range(r * blocks // items, (r + 1) * blocks // items):
            valid = min(BLOCK, n_seq - k * BLOCK)
            for d in range(dirs):
                item = d * blocks + k
                wbase = d * four_h * width
                sbase = item * hidden * BLOCK
                abase = (r * dirs + d) * four_h * cols
                dxh = np.zeros((hidden + x_pad) * BLOCK, dtype=np.float32)  # [dh_{t-1}; dx_t] as vectors
                dcl = np.empty(hidden * BLOCK, dtype=np.float32)
                dy = np.zeros(h_pad * BLOCK, dtype=np.float32)  # this step's output gradient
                # dG_t and [1; h_{t-1}; x_t] of the last GROUP steps, as [channel, step, lane]
                ring_g = np.empty(four_h * zs, dtype=np.float32)
                ring_z = np.zeros((1 + h_pad + x_pad + 3) * zs, dtype=np.float32)  # (>= cols rows)
                _copy_vectors(dh, sbase, dxh, 0, hidden)
                _copy_vectors(dc, sbase, dcl, 0, hidden)
                ones = _vsplat(np.float32(1.0))
                for slot in range(GROUP):
                    _vstore(ring_z, slot * BLOCK, ones)
                filled = 0
                for s in range(steps):
                    # the forward's steps, last first
                    t = s if rev[d] else steps - 1 - s
                    first_step = s == steps - 1  # t was the forward's first step: the state before is h0, c0
                    tp = t + 1 if rev[d] else t - 1
                    row = k * BLOCK * steps + t
                    step = (item * steps + t) * BLOCK
                    prev = (item * steps + tp) * BLOCK
                    slot = filled * BLOCK
                    if first_step:
                        for i in range(hidden):
                            _vstore(ring_z, (1 + i) * zs + slot, _vload(h0, sbase + i * BLOCK))
                    else:
                        for ch in range(0, hidden, BLOCK):
                            _load_transposed(out, (row + tp - t) * n_out + d * hidden + ch, steps * n_out, valid,
                                             min(BLOCK, hidden - ch), ring_z, (1 + ch) * zs + slot, zs)
                    for ch in range(0, n_in, BLOCK):  # (after h: a partial tile of h spills zeros over x)
                        _load_transposed(x, row * n_in + ch, steps * n_in, valid, min(BLOCK, n_in - ch),
                                         ring_z, (1 + hidden + ch) * zs + slot, zs)
                    for ch in range(0, hidden, BLOCK):
                        _load_transposed(d_out, row * n_out + d * hidden + ch, steps * n_out, valid,
                                         min(BLOCK, hidden - ch), dy, ch * BLOCK, BLOCK)
                    one = _vsplat(np.float32(1.0))
                    for i in range(hidden):
                        a = step * four_h + i * BLOCK
                        ig = _vload(acts, a)
                        fg = _vload(acts, a + hidden * BLOCK)
                        gg = _vload(acts, a + 2 * hidden * BLOCK)
                        og = _vload(acts, a + 3 * hidden * BLOCK)
                        th = _vtanh(_vload(cells, step * hidden + i * BLOCK))
                        c_prev = _vload(c0, sbase + i * BLOCK) if first_step else _vload(cells, prev * hidden + i * BLOCK)
                        dhh = _vadd(_vload(dy, i * BLOCK), _vload(dxh, i * BLOCK))
                        dcc = _vfma(_vmul(dhh, og), _vsub(one, _vmul(th, th)), _vload(dcl, i * BLOCK))
                        g = i * zs + slot
                        _vstore(ring_g, g, _vmul(_vmul(dcc, gg), _vmul(ig, _vsub(one, ig))))
                        _vstore(ring_g, g + hidden * zs, _vmul(_vmul(dcc, c_prev), _vmul(fg, _vsub(one, fg))))
                        _vstore(ring_g, g + 2 * hidden * zs, _vmul(_vmul(dcc, ig), _vsub(one, _vmul(gg, gg))))
                        _vstore(ring_g, g + 3 * hidden * zs, _vmul(_vmul(dhh, th), _vmul(og, _vsub(one, og))))
                        _vstore(dcl, i * BLOCK, _vmul(dcc, fg))
                    # [dh_{t-1}; dx_t] = [W_hh | W_ih]^T dG_t
                    _matvec(w, wbase, width, ring_g, slot, zs, dxh, width, four_h)
                    for ch in range(0, n_in, BLOCK):
                        _add_transposed(dxh, (hidden + ch) * BLOCK, dx, row * n_in + ch, steps * n_in, valid,
                                        min(BLOCK, n_in - ch))
                    filled += 1
                    if filled == GROUP or s == steps - 1:
                        _accumulate(acc, abase, ring_g, ring_z, filled, four_h, cols)
                        filled = 0
                _copy_vectors(dxh, 0, dh, sbase, hidden)
                _copy_vectors(dcl, 0, dc, sbase, hidden)
        r = _next_item(counter)


# ------------------------------------------------------------------------ layout helpers
def _blocks(n: int) -> int:
    return -(-n // BLOCK)


def _state_to_blocks(s: torch.Tensor | None, dirs: int, n: int, hidden: int, like: torch.Tensor) -> torch.Tensor:
    """[dirs, N, H] (None: zeros) -> a new [dirs, blocks, H, BLOCK] tensor."""
    blocks = _blocks(n)
    out = like.new_zeros(dirs, blocks * BLOCK, hidden)
    if s is not None:
        out[:, :n] = s
    return out.view(dirs, blocks, BLOCK, hidden).transpose(2, 3).contiguous()


def _state_from_blocks(s: torch.Tensor, n: int) -> torch.Tensor:
    """[dirs, blocks, H, BLOCK] -> [dirs, N, H]."""
    dirs, blocks, hidden, _ = s.shape
    return s.transpose(2, 3).reshape(dirs, blocks * BLOCK, hidden)[:, :n].contiguous()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _shares(items: int) -> int:
    """How many threads share ``items`` work items: ``torch.get_num_threads()`` at most."""
    return max(1, min(torch.get_num_threads(), items))


_gomp = None  # PyTorch's own OpenMP runtime (ctypes), when it has one; False: none


def _torch_openmp():
    """PyTorch's libgomp (the instance its intra-op threads belong to), or None."""
    global _gomp
    if _gomp is None:
        _gomp = False
        try:
            if "OpenMP" in torch.__config__.parallel_info():
                path = os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")
                if os.path.exists(path):
                    lib = ctypes.CDLL(path)  # (already loaded by torch: the same instance)
                    lib.GOMP_parallel.argtypes = [_GOMP_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
                    lib.GOMP_parallel.restype = None
                    lib.omp_get_thread_num.restype = ctypes.c_int
                    lib.omp_in_parallel.restype = ctypes.c_int
                    _gomp = lib
        except (OSError, AttributeError):  # pragma: no cover
            _gomp = False
    return _gomp or None


_GOMP_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _run(kernel, items: int, *args) -> None:
    """``kernel(*args, share, counter, items)`` in :func:`_shares` threads at once (the
    kernels release the GIL); all take work items from the shared counter until none is left,
    so a thread that gets less of a core just does fewer items.

    The threads are PyTorch's own OpenMP team where it has one (an OpenMP parallel region
    started through its libgomp, each thread calling back into the kernel): PyTorch's workers
    keep spinning for milliseconds after each of its parallel regions, so threads of ours
    would have to share the cores with them, while its own workers pick the work up at once.
    Otherwise a small thread pool of ours. (Not numba's ``parallel=True``: it brings a
    second OpenMP runtime whose spinning workers then compete with PyTorch's.)"""
    global _pool, _pool_pid
    counter = np.zeros(1, dtype=np.int64)
    shares = _shares(items)
    if shares == 1 or not kernel.signatures:  # (the first call compiles: in this thread only)
        kernel(*args, 0, counter, items)
        return
    gomp = _torch_openmp()
    if gomp is not None and not gomp.omp_in_parallel():
        errors = []

        def body(_):
            try:
                kernel(*args, gomp.omp_get_thread_num(), counter, items)
            except BaseException as error:  # noqa: BLE001 (re-raised below, in the caller)
                errors.append(error)
        callback = _GOMP_CALLBACK(body)
        gomp.GOMP_parallel(callback, None, shares, 0)
        if errors:
            raise errors[0]
        if counter[0] < items:  # pragma: no cover (a team smaller than asked: finish here)
            kernel(*args, 0, counter, items)
        return
    with _pool_lock:
        # a forked child inherits the pool object but not its threads: make a new one
        if _pool is None or _pool._max_workers < shares - 1 or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=shares - 1, thread_name_prefix="kboost-lstm")
            _pool_pid = os.getpid()
        pool = _pool
    futures = [pool.submit(kernel, *args, i, counter, items) for i in range(1, shares)]
    kernel(*args, 0, counter, items)
    for future in futures:
        future.result()


# ------------------------------------------------------------------------ autograd function
class FastLSTMFunction(torch.autograd.Function):
    """``apply(x, h0, c0, reverse, save, *weights)``: x [N, L, D] contiguous; h0, c0:
    [dirs, N, H] or None (zeros); reverse: whether a single direction runs backwards in time
    (bidirectional: the second one always does); save: keep what the backward needs (False:
    inference; ``ctx.needs_input_grad`` cannot tell, it ignores grad mode); weights: (w_ih,
    w_hh, b_ih, b_hh) per direction, forward first. Returns (out [N, L, dirs * H], h_n, c_n)."""

    @staticmethod
    def forward(ctx, x, h0, c0, reverse, save, *weights):
        dirs = len(weights) // 4
        n, steps, n_in = x.shape
        hidden = weights[1].shape[1]
        blocks = _blocks(n)
        with torch.no_grad():
            w = torch.stack([torch.cat([weights[4 * d + 1], weights[4 * d]], 1) for d in range(dirs)])
            bias = torch.cat([weights[4 * d + 2] + weights[4 * d + 3] for d in range(dirs)])
        w_t = w.transpose(1, 2).contiguous()  # [dirs, H + D, 4H]
        h = _state_to_blocks(h0, dirs, n, hidden, x)
        c = _state_to_blocks(c0, dirs, n, hidden, x)
        h_init, c_init = (h.clone(), c.clone()) if save else (None, None)
        ctx.set_materialize_grads(False)  # (unused outputs: None gradients, not zeros)
        if save:
            acts = x.new_empty(dirs, blocks, steps, 4 * hidden, BLOCK)
            cells = x.new_empty(dirs, blocks, steps, hidden, BLOCK)
        else:
            acts, cells = x.new_empty(1), x.new_empty(1)
        out = x.new_empty(n, steps, dirs * hidden)
        rev = np.array([bool(reverse)] if dirs == 1 else [False, True])
        _run(_forward_kernel, dirs * blocks, _np(x), _np(w_t), _np(bias), rev, _np(h), _np(c), _np(out),
             _np(acts), _np(cells), save)
        if save:
            ctx.save_for_backward(x, out, w, h_init, acts, cells, c_init)
            ctx.dims = (dirs, n, steps, n_in, hidden)
            ctx.rev = rev
        return out, _state_from_blocks(h, n), _state_from_blocks(c, n)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_y, d_hn, d_cn):
        x, out, w, h_init, acts, cells, c_init = ctx.saved_tensors
        dirs, n, steps, n_in, hidden = ctx.dims
        blocks = _blocks(n)
        if d_y is None and d_hn is None and d_cn is None:
            return (None,) * (5 + 4 * dirs)
        d_y = d_y.contiguous() if d_y is not None else out.new_zeros(out.shape)
        dh = _state_to_blocks(d_hn, dirs, n, hidden, acts)
        dc = _state_to_blocks(d_cn, dirs, n, hidden, acts)
        dx = x.new_zeros(n, steps, n_in)
        cols = (n_in + hidden + 4) // 4 * 4
        # fixed block ranges, each with its own sums, added in order: the weight gradients do
        # not depend on which thread took which range, nor on the number of threads
        ranges = min(GRADIENT_RANGES, blocks)
        acc = acts.new_zeros(ranges, dirs, hidden, cols // 4, 16)
        _run(_backward_kernel, ranges, _np(x), _np(out), _np(h_init), _np(acts), _np(cells), _np(c_init), _np(w),
             ctx.rev, _np(d_y), _np(dh), _np(dc), _np(dx), _np(acc))
        needs = ctx.needs_input_grad
        # [dirs, 4H, cols]: the gradients of [b | W_hh | W_ih] (from the 4 x 4 tiles)
        sums = acc.sum(0).view(dirs, hidden, cols // 4, 4, 4).transpose(2, 3).reshape(dirs, 4 * hidden, cols)
        grads = []
        for d in range(dirs):
            db = sums[d, :, 0]
            grads += [sums[d, :, 1 + hidden:1 + hidden + n_in] if needs[5 + 4 * d] else None,
                      sums[d, :, 1:1 + hidden] if needs[6 + 4 * d] else None,
                      db if needs[7 + 4 * d] else None,
                      db.clone() if needs[8 + 4 * d] else None]
        dh0 = _state_from_blocks(dh, n) if needs[1] else None
        dc0 = _state_from_blocks(dc, n) if needs[2] else None
        return (dx if needs[0] else None, dh0, dc0, None, None, *grads)


def lstm(x: torch.Tensor, weights, hx=None, reverse: bool = False):
    """One-layer LSTM over batch-first ``x`` [N, L, D] (float32, CPU).

    ``weights``: (w_ih, w_hh, b_ih, b_hh) for a unidirectional LSTM, or those of the forward
    then of the reverse direction for a bidirectional one, as nn.LSTM names them
    (``weight_ih_l0``, ..., ``bias_hh_l0_reverse``). ``hx``: optional (h0, c0), each
    [dirs, N, H]. ``reverse``: run a unidirectional LSTM backwards in time (as the reverse
    half of a bidirectional one). Returns ``(output [N, L, dirs * H], (h_n, c_n))`` exactly as
    nn.LSTM does; differentiable in x, hx and every weight."""
    if len(weights) not in (4, 8):
        raise ValueError("lstm: expected 4 (unidirectional) or 8 (bidirectional) weight tensors")
    tensors = [x, *weights, *(hx if hx is not None else ())]
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors) or x.dim() != 3:
        raise ValueError("lstm: float32 CPU tensors and a batch-first [N, L, D] input only")
    h0, c0 = hx if hx is not None else (None, None)
    x = x.contiguous()
    h0 = h0.contiguous() if h0 is not None else None
    c0 = c0.contiguous() if c0 is not None else None
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *weights))
    y, h_n, c_n = FastLSTMFunction.apply(x, h0, c0, reverse, save, *weights)
    return y, (h_n, c_n)


def lstm_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0=None, c0=None, reverse=False):
    """Unidirectional form of :func:`lstm`; h0 and c0 [1, N, H] go together (or neither)."""
    if (h0 is None) != (c0 is None):
        raise ValueError("lstm_forward: give both h0 and c0, or neither")
    return lstm(x, (weight_ih, weight_hh, bias_ih, bias_hh), None if h0 is None else (h0, c0), reverse)


# ------------------------------------------------------------------------ module
def applies(module: nn.LSTM, x, hx=None) -> bool:
    """Whether :class:`FastLSTM` takes the fast path for this call (else nn.LSTM's own)."""
    if not enabled():
        return False
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if not (module.num_layers == 1 and module.batch_first and module.bias and module.proj_size == 0
            and (module.dropout == 0 or not module.training)):
        return False
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] != module.input_size:
        return False  # (nn.LSTM reports the error)
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in module._flat_weights):
        return False
    if hx is not None:
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            return False
        expected = ((2 if module.bidirectional else 1), x.shape[0], module.hidden_size)
        for s in hx:
            if not isinstance(s, torch.Tensor) or s.device.type != "cpu" or s.dtype != torch.float32 \
                    or tuple(s.shape) != expected:
                return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return True


class FastLSTM(nn.LSTM):
    """``nn.LSTM`` (same constructor, parameters and state_dict) whose forward runs the fast
    CPU kernels of this module where they apply (see :func:`applies`), else nn.LSTM's own."""

    def forward(self, x, hx=None):
        if not applies(self, x, hx):
            return super().forward(x, hx)
        return lstm(x, self._flat_weights, hx)
