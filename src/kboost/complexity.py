"""Parameters and multiply-accumulates (MACs) of one 8 ms chunk in streaming mode.

The paper reports MACs for one chunk with warm state: the attention caches hold the 49 past
frames of their 50-frame window and the causal conv and merge-alignment buffers are full. We run
``warmup`` chunks first (default: at least 60, more if a window or the delay needs it), then
count one more chunk.

Counter: ptflops 0.7.5's per-module hooks (``ptflops.pytorch_ops.MODULES_MAPPING``, the
``pytorch`` backend) plus hooks of ours for the modules it does not know (see ``CONVENTION``).
We attach the hooks ourselves instead of calling ``get_model_complexity_info``, because
(1) ptflops stops descending at any module it has a hook for, so a hook on ``LocalAttention``
for its attention products would hide its projections; (2) we need to count only some modules
of a run (the device side of a boosted pair while the remote side also runs); (3) the causal
output layer runs ``F.conv2d`` with the ``nn.ConvTranspose2d``'s weights, counted here with
ptflops' formula. The inter-frame ``StreamingLSTM`` (an nn.LSTM that runs one fused cell per
streaming frame) is registered with ptflops' nn.LSTM rule, which counts one step the same way.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np
import torch
from ptflops.pytorch_ops import MODULES_MAPPING
from torch import nn

from .models import BoostedPair, Compression, GridNetSize, TFGridNet, count_parameters
from .models.boosting import COMPRESSIONS
from .models.frontend import HOP, N_FREQS, SAMPLE_RATE, StftFrontEnd
from .models.gridnet import EMBEDDING_DIM, MICS
from .models.fast_lstm import FastLSTM
from .models.layers import CausalConvTranspose2d, HeadNorm, HeadPReLU, LocalAttention, StreamingLSTM
from .tasks import get_task

CHUNKS_PER_SECOND = SAMPLE_RATE // HOP  # 125
WARMUP_CHUNKS = 60

CONVENTION = {
    "unit": "multiply-accumulates (MACs) of one 8 ms chunk (one STFT frame, 97 frequencies), "
            "batch 1, streaming mode with warm state; macs_per_second = 125 x macs_per_chunk",
    "counter": "ptflops 0.7.5 pytorch-backend module hooks, plus our hooks for the project's "
               "custom modules and for the two streaming paths that bypass nn.Module calls",
    "counted": {
        "convolutions": "input Conv2d and compression Conv2d (3x3 causal): 9 x C_in x C_out "
                        "per output position + 1 per output element for the bias (ptflops)",
        "transposed_convolutions": "causal ConvTranspose2d output layer: 9 x C_in x C_out per "
                                   "frequency + bias, as ptflops counts a transposed conv of one "
                                   "input frame (our hook: the streaming path calls F.conv2d)",
        "lstms": "ptflops' LSTM formula per step and direction: 4H(D + H) weight MACs + 18H "
                 "(gate adds, cell/hidden products, both biases); intra-frame BiLSTM: 97 steps x "
                 "2 directions; inter-frame LSTM: one step per frequency (torch.lstm_cell in "
                 "streaming, counted with the same formula)",
        "linear_projections": "nn.Linear (1x1 convs, ConvTranspose1d(kernel 1), FiLM and "
                              "speaker-conditioning projections): (in x out + out) per position, "
                              "positions = product of all leading dims (ptflops; 4-D inputs OK). "
                              "TSE speaker conditioning Linear(256 -> D*F) is counted every chunk, "
                              "as the streaming code runs it",
        "attention_products": "QK^T and attention x V of LocalAttention (self-attention of the "
                              "large model, cross-attention of the merge modules): heads x T_q x "
                              "T_k x F x (qk_dim + v_dim), T_k = valid frames in the window "
                              "(50 when warm)",
        "layer_norms": "1 MAC per element (ptflops counts nn.LayerNorm this way: its affine "
                       "check looks for an 'affine' attribute LayerNorm lacks); our HeadNorm "
                       "hook counts the same",
        "prelu": "1 MAC per element (ptflops' nn.PReLU rule; our HeadPReLU hook)",
    },
    "not_counted": [
        "STFT and iSTFT (FFT, windowing, overlap-add) of the front end",
        "elementwise FiLM products and sums (merge module x*scale+shift, TSE speaker "
        "conditioning), residual additions",
        "softmax, attention scaling, concatenations, buffer copies, state bookkeeping",
    ],
}


# ----------------------------------------------------------------------------- custom hooks
def _numel_hook(module, inputs, output):
    module.__flops__ += int(output.numel())


def _attention_hook(module: LocalAttention, inputs, output):
    """QK^T and AV products only (the projections, activations and norms are its children)."""
    x = inputs[0]
    batch, frames, freqs, _ = x.shape
    per_pair = module.heads * freqs * (module.qk_dim + module.v_dim)
    cache = output[1]
    if frames == 1 and cache is not None:  # one streaming frame; cache = (keys, values, seen)
        pairs = min(cache[2], module.window)
    elif module.start == "zeros":  # whole clip: every query sees a full window (zero frames first)
        pairs = frames * module.window
    else:  # whole clip: query t sees min(t + 1, window) context frames
        pairs = sum(min(t + 1, module.window) for t in range(frames))
    module.__flops__ += int(batch * pairs * per_pair)


def _causal_deconv_hook(module: CausalConvTranspose2d, inputs, output):
    """The streaming output layer runs F.conv2d with the flipped ConvTranspose2d weights."""
    deconv = module.deconv
    x = inputs[0]  # [B, C_in, T, F]: T input frames, T output frames (causal)
    kernel = int(np.prod(deconv.kernel_size))
    positions = x.shape[0] * x.shape[2] * x.shape[3]
    macs = kernel * deconv.in_channels * (deconv.out_channels // deconv.groups) * positions
    if deconv.bias is not None:
        macs += int(output[0].numel())
    module.__flops__ += int(macs)


CUSTOM_HOOKS = {
    HeadNorm: _numel_hook,
    HeadPReLU: _numel_hook,
    LocalAttention: _attention_hook,
    CausalConvTranspose2d: _causal_deconv_hook,
}
# Our LSTMs are nn.LSTM subclasses; give ptflops (also its get_model_complexity_info) nn.LSTM's rule.
for _lstm in (FastLSTM, StreamingLSTM):
    MODULES_MAPPING.setdefault(_lstm, MODULES_MAPPING[nn.LSTM])
# Modules that do run but whose work is not counted (see CONVENTION["not_counted"]).
UNCOUNTED = (StftFrontEnd,)

CATEGORIES = {
    nn.Conv2d: "conv", CausalConvTranspose2d: "conv", nn.ConvTranspose2d: "conv",
    nn.LSTM: "lstm", FastLSTM: "lstm", StreamingLSTM: "lstm", nn.Linear: "linear", LocalAttention: "attention_products",
    nn.LayerNorm: "norm", HeadNorm: "norm", HeadPReLU: "activation",
}


class MacCounter:
    """Counts MACs of the modules in ``groups`` ({name: modules}) while it is active.

    Only the listed modules (and their submodules) are counted, whatever else runs, so one
    boosted-pair step can be split into device and remote parts. Use as a context manager;
    ``totals()`` gives MACs per group, ``breakdown()`` per group and category.
    """

    def __init__(self, groups: dict[str, Iterable[nn.Module]]):
        self.groups = {name: list(mods) for name, mods in groups.items()}
        self._macs: dict[tuple[str, str], int] = defaultdict(int)
        self._handles: list = []

    def _hook_for(self, module):
        kind = type(module)
        if kind in CUSTOM_HOOKS:
            return CUSTOM_HOOKS[kind]
        if kind in MODULES_MAPPING:
            return MODULES_MAPPING[kind]
        return None

    def _add(self, group: str, module: nn.Module, hook):
        def counted(mod, inputs, output):
            mod.__flops__ = 0
            hook(mod, inputs, output)
            self._macs[group, CATEGORIES.get(type(mod), type(mod).__name__)] += mod.__flops__
            del mod.__flops__
        self._handles.append(module.register_forward_hook(counted))

    def __enter__(self) -> "MacCounter":
        seen: set[int] = set()
        for group, modules in self.groups.items():
            for root in modules:
                for module in root.modules():
                    if id(module) in seen:
                        continue
                    seen.add(id(module))
                    hook = self._hook_for(module)
                    if hook is not None:
                        self._add(group, module, hook)
                    elif not list(module.children()) and any(True for _ in module.parameters(recurse=False)) \
                            and not isinstance(module, UNCOUNTED):
                        raise TypeError(f"MAC counter: no rule for {type(module).__name__}")
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def totals(self) -> dict[str, int]:
        out = {name: 0 for name in self.groups}
        for (group, _), value in self._macs.items():
            out[group] += value
        return out

    def breakdown(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {name: {} for name in self.groups}
        for (group, category), value in sorted(self._macs.items()):
            out[group][category] = out[group].get(category, 0) + value
        return out


# ------------------------------------------------------------------------------- one chunk
def _warmup_for(*models: nn.Module, delay: int = 0) -> int:
    windows = [m.window for model in models for m in model.modules() if isinstance(m, LocalAttention)]
    return max([WARMUP_CHUNKS] + [w + delay + 3 for w in windows])


def _inputs(task: str, seed: int):
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.randn(1, EMBEDDING_DIM, generator=generator) if get_task(task).needs_embedding else None
    return generator, embedding


def chunk_macs(target, groups: dict[str, Iterable[nn.Module]] | None = None,
               warmup: int | None = None, seed: int = 0) -> dict:
    """MACs of one warm streaming chunk.

    ``target``: a ``TFGridNet`` (its ``step``), a ``BoostedPair`` (its ``step``: both sides,
    hint delayed) or a callable running one chunk (it keeps its own state). ``groups``
    ({name: modules}) says what to count; default for a model: {"total": [model]} for
    TFGridNet, {"device": [small, merges], "large": [large], "compression": [compression]} for a
    BoostedPair. ``warmup`` chunks run uncounted first (default: >= 60, and enough to fill every
    attention window and the delay buffer).

    Returns {"macs": {group: MACs}, "breakdown": {group: {category: MACs}}}.
    """
    if isinstance(target, (TFGridNet, BoostedPair)):
        model = target.eval()
        generator, embedding = _inputs(model.task, seed)
        state = model.initial_state(1)

        def step():
            chunk = 0.1 * torch.randn(1, MICS, HOP, generator=generator)
            model.step(chunk, state, embedding)

        if groups is None:
            if isinstance(model, BoostedPair):
                groups = {"device": [model.small, model.merges], "large": [model.large],
                          "compression": [model.compression]}
            else:
                groups = {"total": [model]}
        if warmup is None:
            warmup = _warmup_for(model, delay=getattr(model, "delay", 0))
    elif callable(target):
        if groups is None:
            raise ValueError("chunk_macs: a callable target needs groups (the modules to count)")
        step = target
        if warmup is None:
            warmup = _warmup_for(*(m for mods in groups.values() for m in mods))
    else:
        raise TypeError(f"chunk_macs: expected a model or a callable, got {type(target).__name__}")

    with torch.no_grad():
        for _ in range(warmup):
            step()
        with MacCounter(groups) as counter:
            step()
    return {"macs": counter.totals(), "breakdown": counter.breakdown()}


def _entry(params: int, macs: int, side: str, breakdown: dict | None = None) -> dict:
    entry = {"params": int(params), "macs_per_chunk": int(macs),
             "macs_per_second": int(macs) * CHUNKS_PER_SECOND, "side": side}
    if breakdown is not None:
        entry["breakdown_macs_per_chunk"] = dict(breakdown)
    return entry


def _sum_breakdowns(*parts: dict) -> dict:
    out: dict[str, int] = defaultdict(int)
    for part in parts:
        for key, value in part.items():
            out[key] += value
    return dict(sorted(out.items()))


def complexity_report(task: str, sizes: dict[str, GridNetSize], delay: int, compression: int,
                      seed: int = 0) -> dict:
    """Parameters and MACs (per chunk and per second) of the small, medium and large models,
    the boosted small model (small + merge modules, device side, hint given), the compression
    (remote) and the remote total (large + compression), plus the reduction boosted small vs
    medium (medium minus boosted small), and the values of one hint (one chunk) per compression P
    the task's channels allow."""
    torch.manual_seed(seed)
    models = {name: TFGridNet(task, sizes[name]).eval() for name in ("small", "medium", "large")}
    entries = {}
    for name, model in models.items():
        counted = chunk_macs(model, seed=seed)
        entries[name] = _entry(count_parameters(model), counted["macs"]["total"],
                               "remote" if name == "large" else "device", counted["breakdown"]["total"])

    pair = BoostedPair(models["small"], models["large"], delay, compression).eval()
    counted = chunk_macs(pair, groups={"small": [pair.small], "merges": [pair.merges],
                                       "large": [pair.large], "compression": [pair.compression]},
                         seed=seed)
    macs, parts = counted["macs"], counted["breakdown"]
    if macs["small"] != entries["small"]["macs_per_chunk"] or macs["large"] != entries["large"]["macs_per_chunk"]:
        raise RuntimeError("MAC counts of the models inside the boosted pair differ from the standalone models")
    entries["merge_modules"] = _entry(count_parameters(pair.merges), macs["merges"], "device", parts["merges"])
    entries["boosted_small"] = _entry(count_parameters(pair.small, pair.merges), macs["small"] + macs["merges"],
                                      "device", _sum_breakdowns(parts["small"], parts["merges"]))
    entries["compression"] = _entry(count_parameters(pair.compression), macs["compression"], "remote",
                                    parts["compression"])
    entries["remote_total"] = _entry(count_parameters(pair.large, pair.compression),
                                     macs["large"] + macs["compression"], "remote",
                                     _sum_breakdowns(parts["large"], parts["compression"]))
    reduction = entries["medium"]["macs_per_chunk"] - entries["boosted_small"]["macs_per_chunk"]
    channels = 2 * models["large"].n_outputs
    return {
        "task": task,
        "delay": int(delay),
        "compression": int(compression),
        "sizes": {name: size.to_dict() for name, size in sizes.items()},
        "models": entries,
        "reduction_vs_medium": {
            "macs_per_chunk": int(reduction),
            "macs_per_second": int(reduction) * CHUNKS_PER_SECOND,
            "params": entries["medium"]["params"] - entries["boosted_small"]["params"],
            "relative": reduction / entries["medium"]["macs_per_chunk"],
        },
        "hint_values_per_chunk": {str(p): Compression(channels, p).out_channels * N_FREQS
                                  for p in COMPRESSIONS if channels % p == 0},
    }


__all__ = ["CHUNKS_PER_SECOND", "CONVENTION", "MacCounter", "chunk_macs", "complexity_report"]
