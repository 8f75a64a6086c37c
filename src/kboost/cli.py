"""The ``kboost`` command line: run a model on a WAV file the way a device would, 8 ms at a time.

``kboost stream IN.wav OUT.wav --checkpoint model.pt`` (or ``--random-init``) feeds the input to
the model's streamer (:mod:`kboost.streamer`) one 128-sample chunk at a time and reports the
real-time factor.
User-facing problems end with one ``error: ...`` line and exit status 2 (KBOOST_DEBUG=1 shows
the traceback).
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from .errors import KboostError
from .streamer import ENGINES
from .tasks import NAMES as TASK_NAMES, get_task

TASK_HELP = "se: speech enhancement, ss: two-speaker separation, tse: target speech extraction"


class CliError(KboostError, ValueError):
    """A bad combination of options or an unusable option value."""


# ---------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kboost",
        description="Knowledge boosting during low-latency inference (Interspeech 2024): "
                    "reproduction tools.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    stream = commands.add_parser(
        "stream",
        help="run a model on a binaural WAV chunk by chunk (8 ms) and report the real-time factor",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Run a model on a binaural 16 kHz WAV file exactly as on a device: the audio is
            cut into 128-sample (8 ms) chunks and each chunk goes through the model's
            streaming step with carried state. A boosted pair runs its large (remote)
            model on each chunk too, and the small model receives that chunk's hint
            DELAY chunks later.

            Output alignment: the streaming output lags the input by 64 samples (the 4 ms
            lookahead). The input is zero-padded to a whole number of chunks plus one extra
            chunk, the first 64 output samples are dropped, and the output is trimmed to the
            input length, so OUTPUT lines up sample by sample with INPUT.

            Output channels (32-bit float WAV, 16 kHz):
              se, tse  2 channels: the enhanced / extracted target, left and right ear;
              ss       4 channels: speaker 1 left, speaker 1 right, speaker 2 left,
                       speaker 2 right (speaker order is arbitrary, as in any separation).

            Printed: the model and its parameter count (for a boosted pair, on-device part =
            small model + merge modules, remote part = large model + compression), the
            real-time factor (time spent in the chunk loop / audio duration; below 1 is
            faster than real time) and the mean time per 8 ms chunk (for a boosted pair
            also the on-device share of it)."""),
        epilog=textwrap.dedent("""\
            examples:
              kboost stream noisy.wav clean.wav --checkpoint models/se/small.pt
              kboost stream mix.wav sep.wav --random-init --task ss --model boosted --delay 6
              kboost stream mix.wav target.wav --checkpoint tse.pt --enrol speaker.wav"""))
    stream.add_argument("input", metavar="INPUT.wav", type=Path,
                        help="binaural input: exactly 2 channels (left, right) at 16 kHz; other "
                             "rates are an error, nothing is resampled")
    stream.add_argument("output", metavar="OUTPUT.wav", type=Path,
                        help="where to write the output (2 channels, or 4 for ss; see above)")

    source = stream.add_argument_group(
        "model", "either a trained checkpoint or a randomly initialised model (for timing)")
    choice = source.add_mutually_exclusive_group(required=True)
    choice.add_argument("--checkpoint", metavar="CKPT", type=Path,
                        help="checkpoint written by the training stage; it carries the task, "
                             "sizes, delay and compression")
    choice.add_argument("--random-init", action="store_true",
                        help="use untrained weights (seeded by --seed): for speed measurements "
                             "and smoke tests; the output is not meaningful audio")
    source.add_argument("--task", choices=TASK_NAMES,
                        help=f"with --random-init (required there): {TASK_HELP}")
    source.add_argument("--model", choices=["small", "medium", "large", "boosted"],
                        help="with --random-init: paper size (small D16/H16/B3, medium D26/H18/B3, "
                             "large D64/H64/B3 with 8-head attention) or boosted = small on device "
                             "+ large remote (default: small)")
    source.add_argument("--delay", type=_non_negative, metavar="N",
                        help="with --random-init --model boosted: communication delay of the "
                             "large model's hints in 8 ms chunks, e.g. 0, 1, 3, 6 = 0-48 ms "
                             "(default: 6)")
    source.add_argument("--compression", type=int, choices=[1, 2, 4], metavar="P",
                        help="with --random-init --model boosted: hint compression factor P "
                             "in {1, 2, 4} (default: 1)")

    speaker = stream.add_argument_group(
        "target speaker (tse only; exactly one of these is required)")
    enrol = speaker.add_mutually_exclusive_group()
    enrol.add_argument("--enrol", metavar="ENROL.wav", type=Path,
                       help="a clean utterance of the target speaker, 16 kHz, mono (stereo is "
                            "averaged to mono); its 256-d d-vector (Resemblyzer) conditions the model")
    enrol.add_argument("--embedding", metavar="EMB.npy", type=Path,
                       help="a precomputed d-vector: .npy file of 256 floats")

    run = stream.add_argument_group("run")
    run.add_argument("--threads", type=_positive, default=1, metavar="N",
                     help="CPU threads for torch (default: 1, like one core of a device)")
    run.add_argument("--engine", choices=ENGINES, default="compiled",
                     help="compiled: the whole chunk in one numba-compiled call (same outputs as "
                          "torch to about 1e-6, several times faster; the first run compiles for "
                          "~20 s, later runs load the cache); torch: the PyTorch modules' own "
                          "streaming step (default: %(default)s)")
    run.add_argument("--seed", type=int, default=0,
                     help="seed of the random initialisation with --random-init (default: 0)")
    stream.set_defaults(handler=stream_command)

    convert = commands.add_parser(
        "import-authors",
        help="convert a checkpoint of the authors' code (vysri/knowledge-boosting) into ours",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Read a checkpoint of the authors' models (a Lightning .ckpt with a state_dict, or
            a bare state_dict .pt) of a TF-GridNet baseline (SS / TSE, any size) or of a joint
            model (B0-B6, compression variants), map every tensor onto this project's models
            and write this project's checkpoint, for `kboost stream --checkpoint` and the
            evaluation code. Sizes, task and compression are read off the tensors; a joint
            model's delay is not stored in its weights and must be given. The result equals
            the authors' model on every output sample (to ~1e-6; README "Equivalence with
            the authors' code")."""),
        epilog=textwrap.dedent("""\
            examples:
              kboost import-authors SM-BS-25.ckpt ss-small.pt
              kboost import-authors B6-SS.ckpt ss-boosted-d6.pt --delay 6"""))
    convert.add_argument("source", metavar="AUTHORS.ckpt", type=Path, help="the authors' checkpoint")
    convert.add_argument("output", metavar="OUT.pt", type=Path, help="where to write our checkpoint")
    convert.add_argument("--task", choices=TASK_NAMES,
                         help="the model's task (default: read off the tensors: speaker conditioning "
                              "= tse, 4 complex outputs = ss, 2 = se)")
    convert.add_argument("--delay", type=_non_negative, metavar="N",
                         help="joint models: the hint delay in 8 ms chunks (their config's "
                              "joint_model_params.delay, e.g. 6 for B6)")
    convert.add_argument("--window", type=_positive, default=50, metavar="FRAMES",
                         help="attention windows (their local_atten_len and cross_attention_ctx_len; "
                              "default: %(default)s, as in every released config)")
    convert.set_defaults(handler=import_authors_command)
    return parser


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# ---------------------------------------------------------------------------------- stream
def _model_from_args(args):
    """(model, info line) from --checkpoint or --random-init."""
    import torch

    from .models import PAPER_SIZES
    from .models.checkpoint import build_boosted, build_vanilla, load_checkpoint

    if args.checkpoint is not None:
        given = [f"--{name}" for name in ("task", "model", "delay", "compression")
                 if getattr(args, name) is not None]
        if given:
            raise CliError(f"{', '.join(given)} describe a --random-init model; "
                           f"the checkpoint {args.checkpoint} carries its own")
        model, info = load_checkpoint(args.checkpoint)
        if info.kind == "boosted":
            what = (f"boosted {info.task} (small {_size(info.sizes['small'])} + large "
                    f"{_size(info.sizes['large'])}, delay {info.delay} chunks = {8 * info.delay} ms, "
                    f"compression {info.compression})")
        else:
            what = f"vanilla {info.task} {_size(info.sizes['model'])}"
        epoch = info.meta.get("epoch")
        return model, f"{what} from {args.checkpoint}" + (f" (epoch {epoch})" if epoch is not None else "")

    if args.task is None:
        raise CliError("--random-init needs --task {se,ss,tse}")
    kind = args.model or "small"
    if kind != "boosted" and (args.delay is not None or args.compression is not None):
        raise CliError("--delay and --compression apply to --model boosted only")
    torch.manual_seed(args.seed)
    if kind == "boosted":
        delay = 6 if args.delay is None else args.delay
        compression = 1 if args.compression is None else args.compression
        model = build_boosted(args.task, PAPER_SIZES["small"], PAPER_SIZES["large"], delay, compression)
        what = (f"boosted {args.task} (small {_size(PAPER_SIZES['small'])} + large "
                f"{_size(PAPER_SIZES['large'])}, delay {delay} chunks = {8 * delay} ms, "
                f"compression {compression})")
    else:
        model = build_vanilla(args.task, PAPER_SIZES[kind])
        what = f"vanilla {args.task} {kind} {_size(PAPER_SIZES[kind])}"
    return model.eval(), f"{what}, random init (seed {args.seed})"


def _size(size) -> str:
    text = f"D{size.emb_dim}/H{size.hidden}/B{size.blocks}"
    return text + (f"/{size.heads} heads" if size.heads else "")


def _parameters(model) -> str:
    from .models import BoostedPair, count_parameters

    if isinstance(model, BoostedPair):
        device = count_parameters(*model.device_modules())
        remote = count_parameters(*model.remote_modules())
        return f"{device:,} on device (small + merge modules) + {remote:,} remote (large + compression) = {device + remote:,}"
    return f"{count_parameters(model):,}"


def _embedding_from_args(args, task: str):
    """The [1, 256] speaker embedding for TSE (None otherwise)."""
    import numpy as np

    from .audio import read_audio
    from .models.gridnet import EMBEDDING_DIM

    if not get_task(task).needs_embedding:
        if args.enrol is not None or args.embedding is not None:
            raise CliError(f"--enrol / --embedding apply to target speech extraction only; "
                           f"this model's task is {task}")
        return None
    if args.embedding is not None:
        path = args.embedding
        if not path.is_file():
            raise CliError(f"{path}: no such embedding file")
        try:
            vector = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise CliError(f"{path}: not a readable .npy file ({exc})") from exc
        if vector.dtype.kind not in "fiu" or vector.size != EMBEDDING_DIM or vector.squeeze().ndim != 1:
            raise CliError(f"{path}: expected {EMBEDDING_DIM} numbers (a d-vector), found "
                           f"{vector.dtype} array of shape {vector.shape}")
        vector = vector.astype(np.float32).reshape(EMBEDDING_DIM)
        if not np.all(np.isfinite(vector)):
            raise CliError(f"{path}: embedding contains NaN or infinite values")
    elif args.enrol is not None:
        from .speaker import embed_utterance

        audio = read_audio(args.enrol, sample_rate=16000)
        if audio.shape[0] > 2:
            raise CliError(f"{args.enrol}: enrolment audio must be mono or stereo, found {audio.shape[0]} channels")
        vector = embed_utterance(audio.mean(axis=0), 16000)
    else:
        raise CliError("target speech extraction needs the target speaker: give --enrol ENROL.wav "
                       "(a clean utterance) or --embedding EMB.npy (256-d d-vector)")
    return vector[None]


def stream_file(model, audio, embedding=None, engine: str = "compiled", threads: int | None = None):
    """Run ``model`` chunk by chunk over ``audio`` [2, N] (numpy) with the chosen engine
    (``compiled``: kboost.streaming; ``torch``: the modules' own ``step``) through
    :func:`kboost.streamer.stream`.

    Returns (output [channels, N] numpy, timing, chunks processed); timing has "total", the
    seconds spent in the chunk loop, "threads", what every numeric library ran with, and for a
    boosted pair "device", the part of it spent in the on-device side (small model + merge
    modules). ``threads``: hold every library to this many threads (after compiling the engine,
    which loads libraries of its own).
    The input is padded to whole chunks plus one extra chunk; the first 64 output samples (the
    lookahead lag) are dropped, so output sample n corresponds to input sample n.
    """
    import numpy as np
    import torch

    from .models import HOP
    from .models.frontend import stream_length
    from .parallel import limit_threads, thread_report
    from .streamer import make_streamer, stream

    if engine not in ENGINES:
        raise CliError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    samples = audio.shape[-1]
    audio = np.asarray(audio, dtype=np.float32)
    streamer = make_streamer(model, embedding, engine)
    if threads is not None:
        limit_threads(threads)
    timing = {"threads": thread_report()}
    if engine == "torch":  # the modules take a batch
        out = stream(streamer, torch.from_numpy(audio)[None], timing)[0].numpy()
    else:
        out = stream(streamer, audio, timing)
    return np.ascontiguousarray(out.reshape(-1, samples)), timing, stream_length(samples) // HOP


def stream_command(args) -> None:
    from .parallel import limit_threads, thread_report

    limit_threads(args.threads)  # before numpy, torch and numba load their thread pools
    from .audio import check_output_path, read_audio, write_audio
    from .models import SAMPLE_RATE

    # Validate everything cheap before loading models.
    check_output_path(args.output)
    audio = read_audio(args.input, sample_rate=SAMPLE_RATE, channels=2, allow_silent=True)
    model, description = _model_from_args(args)
    embedding = _embedding_from_args(args, model.task)
    limit_threads(args.threads)  # again: the d-vector encoder sets torch to one thread
    if args.engine == "compiled":
        print("preparing the compiled engine (the first run compiles for a few minutes; later runs "
              "load numba's cache) ...", flush=True)
    output, timing, chunks = stream_file(model, audio, embedding, args.engine, threads=args.threads)
    elapsed = timing["total"]
    write_audio(args.output, output, SAMPLE_RATE)

    duration = audio.shape[-1] / SAMPLE_RATE
    print(f"model: {description}")
    print(f"parameters: {_parameters(model)}")
    print(f"input: {args.input}, {duration:.3f} s = {audio.shape[-1]} samples, run as {chunks} chunks "
          f"of 8 ms (zero-padded to whole chunks, +1 to flush the 4 ms lookahead)")
    print(f"engine: {args.engine}" + (" (numba-compiled streaming step)" if args.engine == "compiled"
                                      else " (the PyTorch modules' step)"))
    print(f"real-time factor: {elapsed / duration:.4f} ({elapsed:.3f} s for {duration:.3f} s of audio, "
          f"{args.threads} thread{'s' if args.threads > 1 else ''})")
    print(f"threads: {timing['threads']}")
    print(f"mean time per chunk: {1000 * elapsed / chunks:.3f} ms (budget 8 ms)")
    if "device" in timing:
        device = timing["device"]
        print(f"  of which on device (small + merge modules): {1000 * device / chunks:.3f} ms per chunk, "
              f"real-time factor {device / duration:.4f}; the rest is the remote side")
    print(f"output: {args.output}, {output.shape[0]} channels, {SAMPLE_RATE} Hz")


# -------------------------------------------------------------------------- import-authors
def import_authors_command(args) -> None:
    from .fsutil import file_digest
    from .models import BoostedPair
    from .models.authors import import_authors
    from .models.checkpoint import save_checkpoint

    if args.output.suffix not in (".pt", ".pth") or args.output.is_dir():
        raise CliError(f"{args.output}: the output must be a .pt file path")
    if not args.output.parent.is_dir():
        raise CliError(f"{args.output}: folder {args.output.parent} does not exist")
    model = import_authors(args.source, task=args.task, delay=args.delay, window=args.window)
    if args.delay is not None and not isinstance(model, BoostedPair):
        raise CliError(f"--delay applies to joint models; {args.source} is a baseline TF-GridNet")
    meta = {"imported_from": {"file": str(args.source), "sha256": file_digest(args.source),
                              "code": "github vysri/knowledge-boosting"}}
    save_checkpoint(args.output, model, meta)
    if isinstance(model, BoostedPair):
        what = (f"joint {model.task} model: small {_size(model.small.size)} + large {_size(model.large.size)}, "
                f"delay {model.delay} chunks, compression {model.compression.factor}")
    else:
        what = f"{model.task} TF-GridNet {_size(model.size)}"
    print(f"{args.source}: {what}; {len(model.state_dict())} tensors, parameters {_parameters(model)}")
    print(f"wrote {args.output}")


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    from .stage import exit_on_user_error

    args = build_parser().parse_args(argv)
    with exit_on_user_error():
        args.handler(args)


if __name__ == "__main__":
    main()
