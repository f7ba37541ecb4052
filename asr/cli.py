"""The ``asr`` command: one entry point, one subcommand a job.

Only this module parses argv; it turns arguments into plain calls of the library, and no
module imports it. Heavy imports happen inside each handler so that ``asr --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a beam of 0 or an average of 0 checkpoints is a mistake)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML experiment file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


# --- asr config -------------------------------------------------------------------------------


def _run_config(args: argparse.Namespace) -> int:
    from asr.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


# --- asr synth --------------------------------------------------------------------------------


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="make the synthetic LibriSpeech-layout corpus (offline, espeak-ng)")
    p.add_argument("--out", type=Path, required=True, help="corpus root; writes <out>/LibriSpeech/<split>/...")
    p.add_argument("--size", default="tiny", help="preset: tiny (tests), demo (CPU recipe), gpu (tens of hours)")
    p.add_argument("--hours-scale", type=float, default=1.0, help="multiply every split's size")
    p.add_argument("--seed", type=int, default=0, help="same seed, byte-identical corpus")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (0: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing corpus")


def _run_synth(args: argparse.Namespace) -> int:
    from asr.data.synth import synthesize_corpus

    synthesize_corpus(args.out, size=args.size, hours_scale=args.hours_scale, seed=args.seed,
                      jobs=args.jobs, overwrite=args.overwrite)
    return 0


# --- asr prepare ------------------------------------------------------------------------------


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="a LibriSpeech folder, Kaldi data dir, NeMo or lhotse manifest into JSONL manifests")
    p.add_argument("--corpus", type=Path, required=True,
                   help="LibriSpeech: folder holding LibriSpeech/<split>/ (or that folder); kaldi: a data dir "
                        "(wav.scp, text, utt2spk, segments) or a folder of them; nemo: the manifest file; "
                        "lhotse: a CutSet file, or a folder with recordings + supervisions manifests")
    p.add_argument("--format", choices=["auto", "librispeech", "kaldi", "nemo", "lhotse"], default="auto",
                   help="what --corpus is (auto: told from its files)")
    p.add_argument("--name", default=None,
                   help="split name of a single Kaldi dir, NeMo or lhotse manifest (default: its folder or file name)")
    p.add_argument("--out", type=Path, required=True, help="writes <out>/manifests/<split>.jsonl")
    p.add_argument("--splits", nargs="*", default=None, help="splits to prepare (default: all found)")
    p.add_argument("--sample-rate", type=int, default=16000, help="rate of the manifests' audio, in Hz")
    p.add_argument("--resample", action="store_true", help="resample other rates instead of rejecting them")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (0: all cores)")
    p.add_argument("--combine", nargs="*", type=_combine_spec, default=[], metavar="NAME=A+B",
                   help="also write manifests/NAME.jsonl, the prepared splits A, B, ... in one "
                        "(e.g. train-860=train-clean-360+train-other-500)")


def _combine_spec(text: str) -> tuple[str, list[str]]:
    name, sep, parts = text.partition("=")
    if not sep or not name or not all(parts.split("+")):
        raise argparse.ArgumentTypeError(f"expected NAME=SPLIT+SPLIT[+...], got {text!r}")
    return name, parts.split("+")


def _run_prepare(args: argparse.Namespace) -> int:
    from asr.data.importers import detect_format, import_corpus
    from asr.data.manifest import prepare_corpus

    fmt = detect_format(args.corpus) if args.format == "auto" else args.format
    if fmt == "librispeech":
        if args.name is not None:
            raise ValueError("--name: LibriSpeech splits keep their folder names (use --combine to pool them)")
        prepare_corpus(args.corpus, args.out, splits=args.splits, sample_rate=args.sample_rate,
                       resample=args.resample, jobs=args.jobs, combine=dict(args.combine))
    else:
        import_corpus(fmt, args.corpus, args.out, name=args.name, splits=args.splits,
                      sample_rate=args.sample_rate, resample=args.resample, jobs=args.jobs,
                      combine=dict(args.combine))
    return 0


# --- asr shard --------------------------------------------------------------------------------


def _add_shard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shard", help="write manifests as tar shards + a compact index per split")
    p.add_argument("--manifests", type=Path, required=True, help="folder of <split>.jsonl (asr prepare output)")
    p.add_argument("--out", type=Path, required=True, help="writes <out>/<split>/shard-NNNNNN.tar + index")
    p.add_argument("--splits", nargs="*", default=None, help="splits to shard (default: every manifest)")
    p.add_argument("--shard-mb", type=float, default=256.0, help="target shard size in MB")
    p.add_argument("--shard-utterances", type=int, default=0, help="target utterances a shard (overrides --shard-mb)")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (0: all cores)")


def _run_shard(args: argparse.Namespace) -> int:
    from asr.data.shards import shard_manifests

    shard_manifests(args.manifests, args.out, splits=args.splits, shard_mb=args.shard_mb,
                    shard_utterances=args.shard_utterances, jobs=args.jobs)
    return 0


# --- asr tokenizer ----------------------------------------------------------------------------


def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="build the tokenizer (letters, or train sentencepiece on the labeled text)")
    p.add_argument("--out", type=Path, required=True, help="tokenizer folder")
    p.add_argument("--kind", choices=["letters", "sentencepiece"], default="letters",
                   help="letters (A-Z, apostrophe, word boundary) or a trained sentencepiece model")
    p.add_argument("--text-from", type=Path, help="manifest (.jsonl), shard index folder or Kaldi text whose texts train sentencepiece")
    p.add_argument("--vocab-size", type=int, default=128, help="sentencepiece vocabulary, blank and <unk> included")
    p.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram", help="sentencepiece model type")


def _run_tokenizer(args: argparse.Namespace) -> int:
    from asr.text.tokenizer import build_tokenizer, read_texts

    texts = read_texts(args.text_from) if args.text_from is not None else None
    tok = build_tokenizer(args.kind, args.out, texts=texts, vocab_size=args.vocab_size,
                          model_type=args.model_type)
    print(f"tokenizer: {tok.identity()} -> {args.out}")
    return 0


# --- asr train --------------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the CTC student (supervised, then with EMA-teacher pseudo-labels)")
    _add_config_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and scaling report, then exit")
    p.add_argument("--world-size", type=_positive_int, default=None,
                   help="with --dry-run: the report for this many processes, without starting them "
                        "(default: this launch's WORLD_SIZE)")


def _run_train(args: argparse.Namespace) -> int:
    from asr.config import load_config
    from asr.train import train

    if args.world_size is not None and not args.dry_run:
        raise ValueError("--world-size is for --dry-run; a run's world size is torchrun's")
    return train(load_config(args.config, args.overrides), dry_run=args.dry_run, world_size=args.world_size)


# --- asr eval ---------------------------------------------------------------------------------


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="decode splits with a checkpoint and score them")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file (or folder: its last.pt)")
    p.add_argument("--data", type=Path, required=True, help="shards folder, manifest folder/file, or LibriSpeech folder")
    p.add_argument("--split", nargs="*", default=None, help="splits to decode (default: the checkpoint's dev splits)")
    _add_weights_args(p)
    p.add_argument("--decoder", choices=["greedy", "beam"], default=None, help="default: the checkpoint config's eval.decoder")
    p.add_argument("--beam-size", type=_positive_int, default=None, help="beam width (default: the config's eval.beam_size)")
    p.add_argument("--lexicon", type=Path, default=None,
                   help="word list (or words with spellings) the beam may emit (default: the config's eval.lexicon)")
    p.add_argument("--lm", type=Path, default=None, help="KenLM n-gram, arpa or binary (default: the config's eval.lm)")
    p.add_argument("--lm-weight", type=float, default=None, help="language-model weight (default: the config's eval.lm_weight)")
    p.add_argument("--word-score", type=float, default=None, help="score added per word (default: the config's eval.word_score)")
    p.add_argument("--batch-seconds", type=_positive_float, default=None,
                   help="padded audio seconds a decoding batch (default: the config's eval.batch_seconds)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (the run's own device rules)")
    p.add_argument("--out", type=Path, required=True, help="writes <out>/<split>/ reports")
    p.add_argument("--name", default=None, help="system name for the markdown row (default: from the checkpoint)")


def _add_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", choices=["student", "teacher"], default="student",
                   help="which weights of the checkpoint to use (the teacher is the EMA of the student)")
    p.add_argument("--average-last", type=_positive_int, default=1, help="average the weights of the last N checkpoints")


def _run_eval(args: argparse.Namespace) -> int:
    from asr.evaluate import evaluate_checkpoint

    evaluate_checkpoint(
        args.checkpoint, args.data, splits=args.split, weights=args.weights,
        average_last=args.average_last, decoder=args.decoder, beam_size=args.beam_size,
        lexicon=args.lexicon, lm=args.lm, lm_weight=args.lm_weight, word_score=args.word_score,
        batch_seconds=args.batch_seconds, device=args.device, out_dir=args.out, name=args.name,
    )
    return 0


# --- asr transcribe ---------------------------------------------------------------------------


def _add_transcribe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files with a checkpoint")
    p.add_argument("checkpoint", type=Path, help="checkpoint file (or experiment folder: its last.pt)")
    p.add_argument("audio", nargs="+", type=Path,
                   help="audio files (any rate or channel count), folders (searched recursively) or list "
                        "files (one path a line)")
    _add_weights_args(p)
    p.add_argument("--format", choices=["text", "kaldi", "json"], default="text",
                   help="text: one transcript a line; kaldi: '<file stem> <TEXT>'; json: one object a "
                        "line with per-word start/end seconds and confidences")
    p.add_argument("--out", type=Path, default=None, help="write here (atomically) instead of standard output")
    p.add_argument("--decoder", choices=["greedy", "beam"], default="greedy",
                   help="beam: flashlight-text search, optionally with --lm and --lexicon")
    p.add_argument("--beam-size", type=_positive_int, default=50, help="beam width")
    p.add_argument("--lexicon", type=Path, default=None, help="word list the beam may emit (default: any)")
    p.add_argument("--lm", type=Path, default=None, help="KenLM n-gram, arpa or binary (default: none)")
    p.add_argument("--lm-weight", type=float, default=2.0, help="language-model weight")
    p.add_argument("--word-score", type=float, default=0.0, help="score added per word")
    p.add_argument("--chunk-seconds", type=_positive_float, default=30.0,
                   help="longer files are cut near this length at a quiet point and joined")
    p.add_argument("--batch-seconds", type=_positive_float, default=200.0, help="padded audio seconds a batch")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when there is one)")


def _run_transcribe(args: argparse.Namespace) -> int:
    from asr.transcribe import Transcriber, collect_audio, format_transcripts

    files = collect_audio(args.audio)
    transcriber = Transcriber(args.checkpoint, weights=args.weights, average_last=args.average_last,
                              device=args.device, decoder=args.decoder, beam_size=args.beam_size,
                              lexicon=args.lexicon, lm=args.lm, lm_weight=args.lm_weight,
                              word_score=args.word_score)
    transcripts = transcriber.transcribe(files, chunk_seconds=args.chunk_seconds,
                                         batch_seconds=args.batch_seconds, timings=args.format == "json")
    text = format_transcripts(transcripts, args.format)
    if args.out is None:
        sys.stdout.write(text)
    else:
        from asr.fileio import write_atomic

        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out, text)
    return 0


# --- asr export -------------------------------------------------------------------------------


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to TorchScript and ONNX (waveform in, log-probs out)")
    p.add_argument("checkpoint", type=Path, help="checkpoint file (or experiment folder: its last.pt)")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for model.torchscript.pt, model.onnx, tokens.json, transcribe.py, export.json")
    _add_weights_args(p)
    p.add_argument("--formats", nargs="+", choices=["torchscript", "onnx"], default=["torchscript", "onnx"],
                   help="files to write (onnx needs pip install -e '.[export]')")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest |log-prob difference| from the eager model that an exported file may have")


def _run_export(args: argparse.Namespace) -> int:
    from asr.export import export_checkpoint

    export_checkpoint(args.checkpoint, args.out, weights=args.weights, average_last=args.average_last,
                      formats=tuple(args.formats), opset=args.opset, tolerance=args.tolerance)
    return 0


# --- asr score --------------------------------------------------------------------------------


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score hypothesis transcripts against references (WER/CER)")
    p.add_argument("--ref", type=Path, required=True, help="reference transcripts (Kaldi text or .trn)")
    p.add_argument("--hyp", type=Path, required=True, help="hypothesis transcripts (Kaldi text or .trn)")
    p.add_argument("--format", choices=["auto", "kaldi", "trn"], default="auto", help="auto: by extension")
    p.add_argument("--compare", type=Path, default=None, help="second hypothesis: paired bootstrap test")
    p.add_argument("--normalize", choices=["librispeech", "none"], default="librispeech",
                   help="text normalization of both sides before scoring (none: whitespace only)")
    p.add_argument("--out", type=Path, default=None, help="write alignments and reports to this folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--name", default=None, help="system name in the reports (default: the --hyp path)")


def _run_score(args: argparse.Namespace) -> int:
    from asr.wer import score_files

    score_files(args.ref, args.hyp, fmt=args.format, compare=args.compare,
                normalize=args.normalize, out_dir=args.out, as_json=args.json, seed=args.seed,
                name=args.name)
    return 0


# --- asr results ------------------------------------------------------------------------------


def _add_results(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="collect `asr eval` outputs into one markdown WER table")
    p.add_argument("eval_dirs", nargs="+", type=Path, help="--out folders of asr eval (one row each)")
    p.add_argument("--out", type=Path, default=None, help="also write the table to this file")


def _run_results(args: argparse.Namespace) -> int:
    from asr.evaluate import results_table

    table = results_table(args.eval_dirs)
    print(table, end="")
    if args.out is not None:
        args.out.write_text(table)
    return 0


# --- asr plot ---------------------------------------------------------------------------------


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot dev WER and training loss of runs against hours of audio seen")
    p.add_argument("--runs", nargs="+", type=_run_spec, required=True, metavar="NAME=EXP_DIR[,EXP_DIR]",
                   help="one line per run: its legend name and exp_dir (several, comma-separated, for "
                        "a run continued with train.init_from)")
    p.add_argument("--out", type=Path, required=True, help="PNG file; the plotted points go beside it as .csv")
    from asr.plot import METRICS

    p.add_argument("--metric", choices=METRICS, default=None,
                   help="one panel only (default: every panel with something to show)")
    p.add_argument("--title", default=None, help="figure title")


def _run_spec(text: str) -> tuple[str, list[Path]]:
    name, sep, dirs = text.partition("=")
    if not sep or not name.strip() or not all(dirs.split(",")):
        raise argparse.ArgumentTypeError(f"expected NAME=EXP_DIR[,EXP_DIR...], got {text!r}")
    return name.strip(), [Path(d) for d in dirs.split(",")]


def _run_plot(args: argparse.Namespace) -> int:
    from asr.plot import plot_runs

    csv_path = plot_runs(args.runs, args.out, metric=args.metric, title=args.title)
    print(f"plot: {args.out} (points in {csv_path})")
    return 0


# --- asr scale --------------------------------------------------------------------------------


def _add_scale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale", help="derive effective hyper-parameters for a batch size (the EMA Scaling Rule)")
    p.add_argument("--reference-seconds", type=float, required=True, help="global audio seconds per step at kappa = 1")
    p.add_argument("--batch-seconds", type=float, required=True, help="per-GPU audio seconds per micro-batch")
    p.add_argument("--world-size", type=int, default=1, help="GPUs (ranks) in the run")
    p.add_argument("--accum", type=int, default=1, help="gradient-accumulation micro-batches per optimizer step")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw", "adagrad"], required=True, help="the optimizer")
    p.add_argument("--rule", choices=["auto", "sgd", "adam", "adagrad", "none"], default="auto",
                   help="optimizer scaling rule (auto: the optimizer's own; none: keep the base values)")
    p.add_argument("--lr", type=float, required=True, help="learning rate at kappa = 1")
    p.add_argument("--betas", type=_betas, default=(0.9, 0.98), help="B1,B2 (Adam/AdamW)")
    p.add_argument("--eps", type=float, default=1e-8, help="Adam epsilon at kappa = 1")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay at kappa = 1")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    p.add_argument("--rho", type=float, required=True, help="EMA teacher momentum at kappa = 1")
    p.add_argument("--ema-rule", choices=["power", "none"], default="power", help="power: rho -> rho^kappa")
    p.add_argument("--hours", type=float, nargs="*", default=[], help="schedule points in hours of audio")
    p.add_argument("--on-invalid", choices=["warn", "error"], default="warn",
                   help="what a scaled value outside its valid range does")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _betas(text: str) -> tuple[float, float]:
    try:
        beta1, beta2 = (float(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers B1,B2 such as 0.9,0.98, got {text!r}") from None
    return beta1, beta2


def _run_scale(args: argparse.Namespace) -> int:
    import warnings

    from asr.scaling import ScalingWarning, calculate, format_calculation

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ScalingWarning)
        result = calculate(
            reference_seconds=args.reference_seconds, batch_seconds=args.batch_seconds,
            world_size=args.world_size, accum_steps=args.accum, optimizer=args.optimizer, lr=args.lr,
            betas=args.betas, eps=args.eps, weight_decay=args.weight_decay, momentum=args.momentum,
            rho=args.rho, rule=args.rule, ema_rule=args.ema_rule, hours=args.hours, on_invalid=args.on_invalid,
        )
    for warning in caught:
        print(f"asr scale: warning: {warning.message}", file=sys.stderr)
    print(format_calculation(result, as_json=args.json))
    return 0


# ----------------------------------------------------------------------------------------------


class _VersionAction(argparse.Action):
    """``--version`` that imports torch only when asked, so ``asr --help`` stays instant."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        from asr.runtime import version_report

        print(version_report())
        parser.exit()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, False, []) or the
    help text already says what it is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in help_text:
            return help_text
        return super()._get_help_string(action) or ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description=__doc__.splitlines()[0],
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action=_VersionAction,
                        help="print the versions of asr, Python, torch, torchaudio and CUDA, then exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("config", help="print the resolved config")
    _add_config_args(p)
    for add in (_add_synth, _add_prepare, _add_shard, _add_tokenizer, _add_train, _add_eval,
                _add_transcribe, _add_export, _add_score, _add_results, _add_plot, _add_scale):
        add(sub)
    for subparser in sub.choices.values():
        subparser.formatter_class = _HelpFormatter
    return parser


_HANDLERS = {
    "config": _run_config, "synth": _run_synth, "prepare": _run_prepare, "shard": _run_shard,
    "tokenizer": _run_tokenizer, "train": _run_train, "eval": _run_eval, "score": _run_score,
    "results": _run_results, "plot": _run_plot, "scale": _run_scale, "transcribe": _run_transcribe,
    "export": _run_export,
}


def _terminated(signum: int, _frame: object) -> None:
    """SIGTERM as an exception: ``finally`` blocks run, so no temporary file outlives the
    process (the trainer replaces this with its own checkpoint-then-exit handler)."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    from asr.config import ConfigError

    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return _HANDLERS[args.command](args) or 0
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"asr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        if "pip install" not in str(err):  # a broken install is not the user's input: keep the traceback
            raise
        print(f"asr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"asr {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
