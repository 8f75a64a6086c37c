"""Import the authors' released checkpoints (github vysri/knowledge-boosting) into our models.

Their TF-GridNet (``Net.tfgridnet``) and joint model (``JointModel``: ``small``, ``big``,
``gen_embedding``) hold the same computation as :class:`TFGridNet` and :class:`BoostedPair`
with other names and layouts. Every tensor is mapped explicitly below; a tensor of theirs left
unmapped or used twice, or one of ours left unfilled, is an error that names it.

Layout differences (checked against their outputs in ``tests/test_authors.py``):
- 1x1 ``ConvTranspose1d`` / ``Conv2d`` weights become ``Linear`` weights (transposed / squeezed);
- the per-head self-attention convolutions are stacked into one projection per Q / K / V;
- their LayerNorm over (channels, frequency) has gamma [1, C, 1, F], ours [F, C];
- their output spectrogram channels are ordered (output, real/imag) = ``o * 2 + reim``, ours
  (real/imag, output) = ``reim * n + o``: the output convolution and the compression input
  are permuted accordingly;
- their compression convolution runs on [B, C, F, T] (kernel frequency x time), ours on
  [B, C, T, F].
What the state dict does not hold: the attention windows (their ``local_atten_len`` and
``cross_attention_ctx_len``, 50 in every released config) and a joint model's delay.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .boosting import BoostedPair
from .checkpoint import CheckpointError
from .frontend import N_FREQS
from ..tasks import TASKS
from .gridnet import GridNetSize, TFGridNet

ROOT_KEY = "tfgridnet.conv.0.weight"  # present once in a baseline, twice (small., big.) in a joint model
AUTHORS_WINDOW = 50                   # local_atten_len and cross_attention_ctx_len of their configs


class AuthorsCheckpointError(CheckpointError):
    """A file that is not one of the authors' checkpoints, or does not map onto our models."""


# --------------------------------------------------------------------------------- reading
def read_authors_state_dict(path: str | os.PathLike) -> dict:
    """The tensors of an authors' checkpoint: a Lightning ``.ckpt`` (its ``state_dict``) or a
    bare state dict saved with ``torch.save``."""
    path = Path(path)
    if not path.is_file():
        raise AuthorsCheckpointError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, corrupt, pickled code
        first = str(exc).strip().splitlines()
        raise AuthorsCheckpointError(f"{path}: not a readable PyTorch checkpoint "
                                     f"({type(exc).__name__}: {first[0][:160] if first else ''})") from exc
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]  # Lightning checkpoint
    if not isinstance(payload, dict) or not payload or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in payload.items()):
        raise AuthorsCheckpointError(f"{path}: expected a state dict (parameter names -> tensors) or a "
                                     f"Lightning checkpoint holding one, found {type(payload).__name__}")
    return payload


def _roots(state_dict: dict, path) -> tuple[str, str | None, str]:
    """(kind, joint-model prefix or None, baseline prefix) from where ``tfgridnet.conv.0.weight`` sits."""
    prefixes = sorted(key[: -len(ROOT_KEY)] for key in state_dict if key.endswith(ROOT_KEY))
    if len(prefixes) == 1 and not prefixes[0].endswith(("small.", "big.")):
        return "vanilla", None, prefixes[0]
    joint = {p[: -len("small.")] for p in prefixes if p.endswith("small.")}
    if len(prefixes) == 2 and len(joint) == 1 and f"{next(iter(joint))}big." in prefixes:
        return "boosted", next(iter(joint)), ""
    raise AuthorsCheckpointError(f"{path}: not a checkpoint of the authors' TF-GridNet or joint model "
                                 f"(expected one '{ROOT_KEY}' tensor, or one under 'small.' and one under "
                                 f"'big.'; found {len(prefixes)})")


# ------------------------------------------------------------------------------ the mapping
class _Mapping:
    """Takes each of the authors' tensors at most once and fills each of ours exactly once."""

    def __init__(self, theirs: dict, path):
        self.theirs, self.path = theirs, path
        self.used: set[str] = set()
        self.ours: dict[str, torch.Tensor] = {}

    def take(self, key: str) -> torch.Tensor:
        if key in self.used:
            raise AuthorsCheckpointError(f"{self.path}: tensor {key!r} would be used twice")
        if key not in self.theirs:
            raise AuthorsCheckpointError(f"{self.path}: tensor {key!r} is missing")
        self.used.add(key)
        return self.theirs[key]

    def put(self, key: str, tensor: torch.Tensor) -> None:
        if key in self.ours:
            raise AuthorsCheckpointError(f"{self.path}: our tensor {key!r} would be filled twice")
        self.ours[key] = tensor.detach().clone().contiguous()

    def copy(self, ours: str, theirs: str, fn=lambda t: t) -> None:
        self.put(ours, fn(self.take(theirs)))

    def unused(self) -> list[str]:
        return sorted(set(self.theirs) - self.used)


def _channel_norm(t: torch.Tensor) -> torch.Tensor:  # [1, C, 1, 1] -> [C]
    return t.reshape(-1)


def _cf_norm(t: torch.Tensor) -> torch.Tensor:  # [1, C, 1, F] -> [F, C]
    return t[0, :, 0, :].transpose(0, 1)


def _conv1x1(t: torch.Tensor) -> torch.Tensor:  # Conv2d [out, in, 1, 1] -> Linear [out, in]
    return t.reshape(t.shape[0], t.shape[1])


def _deconv1x1(t: torch.Tensor) -> torch.Tensor:  # ConvTranspose1d [in, out, 1] -> Linear [out, in]
    return t[..., 0].transpose(0, 1)


def output_order(outputs: int) -> torch.Tensor:
    """Index into the authors' spectrogram channels (o * 2 + reim) for each of ours (reim * n + o)."""
    return torch.tensor([o * 2 + reim for reim in range(2) for o in range(outputs)])


def _size(theirs: dict, prefix: str, window: int, path) -> tuple[GridNetSize, int, bool]:
    """(size, complex outputs, has speaker conditioning) of the TF-GridNet under ``prefix``."""
    blocks = {int(m.group(1)) for key in theirs for m in [re.match(re.escape(prefix) + r"blocks\.(\d+)\.", key)] if m}
    heads = {int(m.group(1)) for key in theirs
             for m in [re.match(re.escape(prefix) + r"blocks\.0\.attn_conv_Q_(\d+)\.0\.weight$", key)] if m}
    try:
        size = GridNetSize(emb_dim=theirs[prefix + "conv.0.weight"].shape[0],
                           hidden=theirs[prefix + "blocks.0.intra_rnn.weight_hh_l0"].shape[1],
                           blocks=len(blocks), heads=len(heads), window=window)
        outputs = theirs[prefix + "deconv.bias"].shape[0] // 2
    except KeyError as exc:
        raise AuthorsCheckpointError(f"{path}: tensor {exc.args[0]!r} is missing") from None
    conditioned = any(key.startswith(prefix + "TSE_blocks.") for key in theirs)
    return size, outputs, conditioned


def _map_gridnet(m: _Mapping, prefix: str, ours: str, size: GridNetSize, outputs: int, conditioned: bool) -> None:
    m.copy(f"{ours}input_conv.conv.weight", f"{prefix}conv.0.weight")
    m.copy(f"{ours}input_conv.conv.bias", f"{prefix}conv.0.bias")
    m.copy(f"{ours}input_norm.weight", f"{prefix}conv.1.weight")
    m.copy(f"{ours}input_norm.bias", f"{prefix}conv.1.bias")
    lstm_tensors = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    for b in range(size.blocks):
        src, dst = f"{prefix}blocks.{b}.", f"{ours}blocks.{b}."
        for stage, directions in (("intra", ("", "_reverse")), ("inter", ("",))):
            m.copy(f"{dst}{stage}_norm.weight", f"{src}{stage}_norm.gamma", _channel_norm)
            m.copy(f"{dst}{stage}_norm.bias", f"{src}{stage}_norm.beta", _channel_norm)
            for name in lstm_tensors:
                for direction in directions:
                    m.copy(f"{dst}{stage}_rnn.{name}{direction}", f"{src}{stage}_rnn.{name}{direction}")
            m.copy(f"{dst}{stage}_proj.weight", f"{src}{stage}_linear.weight", _deconv1x1)
            m.copy(f"{dst}{stage}_proj.bias", f"{src}{stage}_linear.bias")
        if size.heads:
            att = f"{dst}attention."
            for ours_name, theirs_name in (("query", "Q"), ("key", "K"), ("value", "V")):
                per_head = [f"{src}attn_conv_{theirs_name}_{h}." for h in range(size.heads)]
                m.put(f"{att}{ours_name}.weight", torch.cat([_conv1x1(m.take(p + "0.weight")) for p in per_head]))
                m.put(f"{att}{ours_name}.bias", torch.cat([m.take(p + "0.bias") for p in per_head]))
                m.put(f"{att}{ours_name}_act.weight", torch.stack([m.take(p + "1.weight") for p in per_head]).view(-1, 1, 1))
                m.put(f"{att}{ours_name}_norm.weight", torch.stack([_cf_norm(m.take(p + "2.gamma")) for p in per_head]))
                m.put(f"{att}{ours_name}_norm.bias", torch.stack([_cf_norm(m.take(p + "2.beta")) for p in per_head]))
            proj = f"{src}attn_concat_proj."
            m.copy(f"{att}out.weight", proj + "0.weight", _conv1x1)
            m.copy(f"{att}out.bias", proj + "0.bias")
            m.copy(f"{att}out_act.weight", proj + "1.weight", lambda t: t.view(1, 1, 1))
            m.copy(f"{att}out_norm.weight", proj + "2.gamma", _cf_norm)
            m.copy(f"{att}out_norm.bias", proj + "2.beta", _cf_norm)
    if conditioned:
        for b in range(size.blocks - 1):
            for ours_name, theirs_name in (("scale", "weight"), ("shift", "bias")):
                src = f"{prefix}TSE_blocks.{b}.{theirs_name}."
                m.copy(f"{ours}conditioning.{b}.{ours_name}.weight", src + "weight", lambda t: t[..., 0])
                m.copy(f"{ours}conditioning.{b}.{ours_name}.bias", src + "bias")
    order = output_order(outputs)
    m.copy(f"{ours}output_conv.deconv.weight", f"{prefix}deconv.weight", lambda t: t[:, order])
    m.copy(f"{ours}output_conv.deconv.bias", f"{prefix}deconv.bias", lambda t: t[order])


def _map_merges(m: _Mapping, prefix: str, merges: int) -> None:
    for i in range(merges):
        film, att = f"{prefix}film_blocks.{i}.", f"{prefix}cross_attention_blocks.{i}."
        dst = f"merges.{i}."
        for ours_name, theirs_name in (("scale", "weight"), ("shift", "bias")):
            m.copy(f"{dst}{ours_name}.weight", f"{film}{theirs_name}.weight", _conv1x1)
            m.copy(f"{dst}{ours_name}.bias", f"{film}{theirs_name}.bias")
        for ours_name, theirs_name in (("query", "Q"), ("key", "K"), ("value", "V"), ("out", None)):
            src = f"{att}attn_conv_{theirs_name}." if theirs_name else f"{att}attn_concat_proj."
            norm = f"{dst}attention.{ours_name}_norm" if theirs_name else f"{dst}attention.out_norm"
            m.copy(f"{dst}attention.{ours_name}.weight", src + "0.weight")
            m.copy(f"{dst}attention.{ours_name}.bias", src + "0.bias")
            m.copy(f"{dst}attention.{ours_name}_act.weight", src + "1.weight", lambda t: t.view(1, 1, 1))
            shape = (1, N_FREQS, -1) if theirs_name else (N_FREQS, -1)
            m.copy(f"{norm}.weight", src + "3.norm.weight", lambda t, s=shape: t.view(*s))
            m.copy(f"{norm}.bias", src + "3.norm.bias", lambda t, s=shape: t.view(*s))


def _task(outputs: int, conditioned: bool, task: str | None, path) -> str:
    matching = [t.name for t in TASKS.values() if t.output_channels == outputs and t.needs_embedding == conditioned]
    found = matching[0] if len(matching) == 1 else None
    if task is None:
        if found is None:
            raise AuthorsCheckpointError(f"{path}: {outputs} complex outputs match no task; pass the task")
        return found
    if task not in TASKS or TASKS[task].output_channels != outputs or TASKS[task].needs_embedding != conditioned:
        raise AuthorsCheckpointError(f"{path}: the checkpoint is a model with {outputs} complex outputs"
                                     f"{' and speaker conditioning' if conditioned else ''}, not a {task} model")
    return task


def convert_authors(state_dict: dict, *, task: str | None = None, delay: int | None = None,
                    window: int = AUTHORS_WINDOW, path: str | os.PathLike = "state dict"):
    """Our model (TFGridNet or BoostedPair, eval mode) holding the authors' weights.

    ``task``: inferred when omitted (speaker conditioning: tse; 4 complex outputs: ss; 2: se).
    ``delay``: required for a joint model (their state dict does not record it).
    """
    kind, joint, prefix = _roots(state_dict, path)
    m = _Mapping(state_dict, path)
    if kind == "vanilla":
        size, outputs, conditioned = _size(state_dict, prefix + "tfgridnet.", window, path)
        task = _task(outputs, conditioned, task, path)
        model = TFGridNet(task, size)
        _map_gridnet(m, prefix + "tfgridnet.", "", size, outputs, conditioned)
    else:
        if delay is None:
            raise AuthorsCheckpointError(f"{path}: a joint (boosted) model needs its delay in chunks "
                                         f"(their config's joint_model_params.delay); it is not in the weights")
        small_prefix, large_prefix = f"{joint}small.tfgridnet.", f"{joint}big.tfgridnet."
        small, outputs, conditioned = _size(state_dict, small_prefix, window, path)
        large, large_outputs, large_conditioned = _size(state_dict, large_prefix, window, path)
        task = _task(outputs, conditioned, task, path)
        _task(large_outputs, large_conditioned, task, path)
        compression_key = f"{joint}gen_embedding.conv1d.weight"
        if compression_key not in state_dict:
            raise AuthorsCheckpointError(f"{path}: tensor {compression_key!r} is missing")
        hint_channels = state_dict[compression_key].shape[0]
        if (2 * outputs) % hint_channels:
            raise AuthorsCheckpointError(f"{path}: {hint_channels} hint channels do not divide {2 * outputs}")
        try:
            model = BoostedPair(TFGridNet(task, small), TFGridNet(task, large), delay=delay,
                                compression=2 * outputs // hint_channels, merge_start="zeros")
        except ValueError as exc:
            raise AuthorsCheckpointError(f"{path}: {exc}") from exc
        _map_gridnet(m, small_prefix, "small.", small, outputs, conditioned)
        _map_gridnet(m, large_prefix, "large.", large, outputs, conditioned)
        order = output_order(outputs)
        m.copy("compression.conv.conv.weight", compression_key, lambda t: t.transpose(2, 3)[:, order])
        m.copy("compression.conv.conv.bias", f"{joint}gen_embedding.conv1d.bias")
        _map_merges(m, small_prefix, small.blocks - 1)
    unused = m.unused()
    if unused:
        raise AuthorsCheckpointError(f"{path}: {len(unused)} tensor(s) of the checkpoint map to nothing of ours: "
                                     + ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else ""))
    expected = model.state_dict()
    unfilled = sorted(set(expected) - set(m.ours))
    if unfilled:
        raise AuthorsCheckpointError(f"{path}: no tensor of the checkpoint fills ours: " + ", ".join(unfilled[:5]))
    wrong = [f"{key} {tuple(m.ours[key].shape)} vs {tuple(value.shape)}"
             for key, value in expected.items() if m.ours[key].shape != value.shape]
    if wrong:
        raise AuthorsCheckpointError(f"{path}: mapped tensors of the wrong shape (theirs vs ours): "
                                     + ", ".join(wrong[:5]))
    model.load_state_dict(m.ours)
    return model.eval()


def import_authors(path: str | os.PathLike, **kwargs):
    """Read and convert one of the authors' checkpoint files (see :func:`convert_authors`)."""
    return convert_authors(read_authors_state_dict(path), path=path, **kwargs)
