"""Experiment configuration: a typed schema, one YAML file, `key=value` overrides.

A run is ``schema <- configs/X.yaml <- dotlist overrides``. Everything is checked before
any work starts: an unknown key names the closest valid keys, a wrong type or an impossible
value names the key, the value and what is allowed.

Hyper-parameters here are the *base* values at kappa = 1, i.e. at the reference batch
``scaling.reference_seconds``. The values a run actually uses are derived by
:mod:`asr.scaling` and printed in the scaling report. Every schedule is in hours of audio
seen, so that it means the same thing at any batch size.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from asr.scaling import EMARule, OnInvalid, OptimizerName, OptimizerRule

PosConvImpl = Literal["auto", "direct", "fft"]
"""How the model's positional convolution is computed (``model.pos_conv_impl``)."""

AttentionKernels = Literal["auto", "torch", "flash_efficient"]
"""Which fused attention kernels SDPA may use (``model.attention_kernels``)."""


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


@dataclass
class DataConfig:
    shards_dir: str = "exp/synth/data/shards"
    """Folder holding one sub-folder of tar shards + index per split (``asr shard`` output)."""
    train_split: str = "train-clean"
    """Labeled split used for the supervised loss."""
    unlabeled_split: str | None = "train-unlabeled"
    """Split whose transcripts are never read for training; pseudo-labeled by the teacher."""
    dev_splits: list[str] = field(default_factory=lambda: ["dev-clean", "dev-other"])
    """Splits decoded for the dev WER during training (the first one selects the best checkpoint)."""
    max_batch_seconds: float = 60.0
    """Per-GPU micro-batch cap in *padded* audio seconds (batch size x longest utterance)."""
    num_buckets: int = 16
    """Duration buckets; utterances of one bucket are batched together to limit padding."""
    min_duration: float = 0.5
    """Utterances shorter than this (seconds) are dropped."""
    max_duration: float = 30.0
    """Utterances longer than this (seconds) are dropped; must fit in max_batch_seconds."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 reads in the training process)."""
    seed: int = 0
    """Seed of the per-epoch shuffle; the order depends only on (seed, epoch, config)."""
    speed_perturb: list[float] = field(default_factory=list)
    """Speed perturbation of the training streams (Ko et al. 2015): ``[0.9, 1.0, 1.1]`` reads
    every utterance at each speed once an epoch (pitch and tempo together, by resampling), as
    separate items of the epoch plan, which batches them by their perturbed durations; empty
    (the default) reads them as they are. Deterministic for a seed and resumable like the
    plan itself; dev and test sets are never perturbed."""
    max_bad_fraction: float = 0.01
    """Utterances that do not decode (corrupt or truncated shard members) or whose text the
    tokenizer cannot encode are skipped and counted per split; the run stops once the skipped
    reads exceed this share of the reads (counted against at least one epoch of the split)."""


@dataclass
class TokenizerConfig:
    kind: Literal["letters", "sentencepiece"] = "letters"
    """``letters`` (LibriSpeech alphabet, apostrophe, word boundary) or ``sentencepiece``."""
    vocab_size: int = 128
    """Sentencepiece vocabulary size (ignored for letters)."""
    model_type: Literal["unigram", "bpe"] = "unigram"
    """Sentencepiece model type: ``unigram`` or ``bpe``."""
    path: str | None = None
    """Trained tokenizer folder; default ``<exp_dir>/tokenizer``, trained/written at start."""


@dataclass
class FeatureConfig:
    sample_rate: int = 16000
    """Expected audio sample rate in Hz."""
    n_mels: int = 80
    """Log-mel filterbank channels."""
    win_ms: float = 25.0
    """Analysis window in milliseconds."""
    hop_ms: float = 10.0
    """Frame shift in milliseconds."""
    normalize: Literal["utterance", "none"] = "utterance"
    """``utterance`` (mean/variance per utterance and channel over its valid frames) or ``none``."""


@dataclass
class SpecAugmentConfig:
    policy: Literal["none", "LB", "LD", "custom"] = "LD"
    """Preset: ``LB``/``LD`` (Park et al. 2019 LibriSpeech basic/double), ``custom`` or ``none``."""
    freq_masks: int = 2
    """Number of frequency masks (custom policy)."""
    freq_width: int = 27
    """Maximum frequency-mask width F in mel channels (custom policy)."""
    time_masks: int = 2
    """Number of time masks (custom policy)."""
    time_width: int = 100
    """Maximum time-mask width T in frames (custom policy)."""
    time_ratio: float = 1.0
    """Upper bound p on a time mask as a fraction of the utterance (custom policy)."""
    start_hours: float = 0.0
    """Audio hours seen before SpecAugment is switched on."""


@dataclass
class ModelConfig:
    frontend: Literal["conv1d", "conv2d"] = "conv1d"
    """``conv1d`` (kernel 7, stride 3, GLU: slimIPL) or ``conv2d`` (two stride-2 convs: 4x)."""
    d_model: int = 144
    """Encoder width."""
    num_layers: int = 6
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (d_model must divide by it)."""
    ffn_dim: int = 576
    """Feed-forward hidden width."""
    dropout: float = 0.1
    """Dropout on residual branches and after the front-end."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    layerdrop: float = 0.0
    """Probability of skipping a whole block in training (Fan et al. 2019)."""
    norm_first: bool = True
    """Pre-LN (True) or post-LN (False) blocks."""
    position: Literal["conv", "sinusoidal"] = "conv"
    """Positional scheme: ``conv`` (convolutional relative, any length) or ``sinusoidal``."""
    conv_module: bool = False
    """Add a depthwise-convolution module to each block (conformer-style)."""
    conv_kernel: int = 15
    """Kernel of the depthwise convolution module."""
    pos_conv_kernel: int = 128
    """Kernel, in encoder frames, of the convolutional positional embedding (``position=conv``)."""
    pos_conv_groups: int = 16
    """Groups of the convolutional positional embedding (d_model must divide by it)."""
    pos_conv_impl: PosConvImpl = "auto"
    """How the positional convolution is computed: ``auto`` (FFT on CUDA, where bf16 grouped
    convolutions have no tensor-core kernels; direct elsewhere), ``direct`` or ``fft``. The same
    parameters either way."""
    attention_kernels: AttentionKernels = "auto"
    """SDPA's kernels: ``torch`` lets PyTorch choose (cuDNN first on Hopper GPUs), and
    ``flash_efficient`` allows only flash (unpadded batches) and memory-efficient attention.
    ``auto`` is ``flash_efficient``: cuDNN's attention builds a plan for every new input shape,
    and a sampler's batches rarely repeat one (docs/PERFORMANCE.md). The same function either
    way."""


@dataclass
class OptimConfig:
    name: OptimizerName = "adam"
    """``sgd``, ``adam``, ``adamw`` or ``adagrad``."""
    lr: float = 1e-3
    """Peak learning rate at kappa = 1."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """Adam/AdamW (beta1, beta2) at kappa = 1."""
    eps: float = 1e-8
    """Adam/AdamW/Adagrad epsilon at kappa = 1."""
    weight_decay: float = 0.0
    """L2 (SGD/Adam/Adagrad) or decoupled (AdamW) weight decay at kappa = 1."""
    momentum: float = 0.0
    """SGD heavy-ball momentum at kappa = 1."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""


@dataclass
class ScheduleConfig:
    total_hours: float = 10.0
    """Length of training in hours of audio seen (labeled + unlabeled)."""
    warmup_hours: float = 0.5
    """Linear learning-rate warm-up length."""
    decay: Literal["cosine", "linear", "step", "constant"] = "cosine"
    """After warm-up: ``constant``, ``cosine``, ``linear`` or ``step``."""
    decay_start_hours: float = 0.0
    """Hours of audio seen before decay begins (clamped to the end of warm-up)."""
    step_boundaries_hours: list[float] = field(default_factory=list)
    """``step`` decay: boundaries in hours at which lr is multiplied by step_factor."""
    step_factor: float = 0.5
    """``step`` decay: multiplier at each boundary."""
    final_lr_ratio: float = 0.05
    """``cosine``/``linear``: final lr as a fraction of the peak."""


@dataclass
class ProgressiveStage:
    hours: float = 0.0
    """Hours of audio seen at which this stage begins."""
    accum_steps: int = 1
    """Gradient-accumulation steps from that point on."""


@dataclass
class ScalingConfig:
    reference_seconds: float = 120.0
    """Global audio seconds per optimizer step at which the base hyper-parameters hold (kappa = 1)."""
    optimizer_rule: OptimizerRule = "auto"
    """``auto`` (the optimizer's own rule), ``sgd``, ``adam``, ``adagrad`` or ``none``."""
    ema_rule: EMARule = "power"
    """``power`` (rho -> rho^kappa, the EMA Scaling Rule) or ``none`` (rho fixed)."""
    on_invalid: OnInvalid = "error"
    """When a scaled value leaves its valid range (an Adam beta at kappa >= 1 / (1 - beta), rho^kappa
    underflowing): ``error`` refuses the run, naming the kappa and the value; ``warn`` clamps it."""
    progressive: list[ProgressiveStage] = field(default_factory=list)
    """Batch-size schedule over data seen, as accumulation steps; empty keeps train.accum_steps."""


@dataclass
class EMAConfig:
    rho: float = 0.999
    """Teacher momentum per optimizer step at kappa = 1."""
    start: Literal["pl_start", "step0"] = "pl_start"
    """When the teacher is created as a copy of the student: ``pl_start`` or ``step0``."""


@dataclass
class PseudoLabelConfig:
    enabled: bool = True
    """Train on teacher pseudo-labels after pl.start_hours (False: supervised only)."""
    start_hours: float = 2.0
    """Hours of labeled audio seen before the pseudo-label phase."""
    unlabeled_per_labeled: float = 1.0
    """Pseudo-labeled optimizer steps per labeled step in the pseudo-label phase (every update is
    wholly one or the other, as slimIPL alternates them)."""
    unlabeled_weight: float = 1.0
    """Weight of the pseudo-label CTC loss against the labeled one."""
    min_tokens: int = 1
    """Pseudo-labels with fewer tokens are dropped."""
    min_confidence: float = 0.0
    """Pseudo-labels whose mean token probability under the teacher is lower are dropped (0: keep all)."""
    dropout: float | None = None
    """Model dropout from the pseudo-label start on (None keeps it)."""
    layerdrop: float | None = None
    """Model LayerDrop from the pseudo-label start on (None keeps it)."""


@dataclass
class TrainConfig:
    exp_dir: str = "exp/synth/tiny"
    """Experiment folder: resolved config, tokenizer, checkpoints, TensorBoard logs."""
    seed: int = 0
    """Seed of model initialisation and augmentation."""
    accum_steps: int = 1
    """Gradient-accumulation micro-batches per optimizer step (per rank)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``, ``cpu`` or ``cuda``."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16`` or ``fp32``."""
    compile: Literal["auto", "blocks", "none"] = "none"
    """``torch.compile`` of the encoder blocks of student and teacher (one graph for all blocks,
    LayerDrop outside it): ``auto`` (on CUDA only), ``blocks`` or ``none``. Where inductor fails,
    a warning gives the reason and the blocks run eagerly. Off by default: on an H200 it made
    the paper model's step slower and only the base model's 800 s step faster
    (docs/PERFORMANCE.md)."""
    log_every_steps: int = 20
    """Progress line and TensorBoard scalars every N optimizer steps."""
    eval_every_hours: float = 1.0
    """Dev WER of student and teacher every this many hours of audio seen (0 disables)."""
    checkpoint_every_hours: float = 1.0
    """Periodic checkpoint cadence in hours of audio seen."""
    keep_last: int = 3
    """Periodic checkpoints kept (the best-on-dev one is kept separately)."""
    max_nonfinite_in_row: int = 10
    """Stop after this many consecutive skipped (non-finite) steps."""
    resume: bool = True
    """Resume from <exp_dir>/checkpoints/last.pt when it exists."""
    max_minutes: float = 0.0
    """Wall-clock budget; training stops cleanly (with a checkpoint) when spent (0: none)."""
    stop_hours: float = 0.0
    """Stop (with a checkpoint) after this many hours of audio seen, schedules unchanged (0: at the end)."""
    collective_timeout_s: float = 300.0
    """Seconds a collective (all-reduce, barrier) may wait for the other ranks before the job
    ends with a message naming the rank that stalled; saves and evaluations must fit in it."""
    signal_check_steps: int = 5
    """With several ranks, every this many optimizer steps the ranks agree (one all-reduce)
    whether a SIGTERM/SIGINT arrived; one process checks every step at no cost."""
    init_from: str | None = None
    """Start from this checkpoint's full state (weights, optimizer, step, data position) in a new
    exp_dir: runs that share a phase, e.g. supervised-only vs pseudo-labeled after one warm start."""


@dataclass
class EvalConfig:
    batch_seconds: float = 200.0
    """Padded audio seconds per decoding batch."""
    decoder: Literal["greedy", "beam"] = "greedy"
    """``greedy`` or ``beam`` (torchaudio ctc_decoder; needs flashlight-text)."""
    beam_size: int = 50
    """Beam width."""
    lexicon: str | None = None
    """Lexicon file for lexicon-constrained beam search."""
    lm: str | None = None
    """KenLM arpa/binary n-gram for beam search."""
    lm_weight: float = 2.0
    """Language-model weight."""
    word_score: float = 0.0
    """Word insertion score."""


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    specaug: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    pl: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------
# Loading


def _all_keys(schema: type, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(schema):
        name = f"{prefix}{f.name}"
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys.extend(_all_keys(type(default), name + "."))
        else:
            keys.append(name)
    return keys


def _unknown_key_error(key: str) -> ConfigError:
    valid = _all_keys(ExperimentConfig)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not close:  # compare the last component too: `optim.learning_rate` -> `optim.lr`
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in valid if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.6)][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _wrap(err: Exception, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    if isinstance(err, ConfigKeyError) and key:
        return ConfigError(f"{source}: {_unknown_key_error(str(key))}")
    msg = getattr(err, "msg", str(err)).split("\n")[0]
    value = getattr(err, "value", None)
    where = f"key '{key}'" if key else "config"
    choices = re.fullmatch(r"Invalid value '(.*)', expected one of \[(.*)\]", msg)
    if choices:  # a typed choice (Literal) of the schema
        allowed = ", ".join(part.strip().strip("'") for part in choices.group(2).split(","))
        return ConfigError(f"{source}: {where}: got {choices.group(1)!r}, allowed values are {allowed}")
    got = f" (got {value!r})" if value is not None else ""
    return ConfigError(f"{source}: {where}: {msg}{got}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Merge ``schema <- YAML file <- key=value overrides`` and validate the result."""
    cfg = OmegaConf.structured(ExperimentConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        except yaml.MarkedYAMLError as err:
            raise _yaml_error(err, str(path)) from None
        except (ConfigKeyError, ValidationError) as err:
            raise _wrap(err, str(path)) from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key = item.split("=", 1)[0].lstrip("+")
        if key not in _all_keys(ExperimentConfig) and not _is_list_item(key):
            raise _unknown_key_error(key)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides or [])))
    except yaml.MarkedYAMLError as err:
        raise ConfigError(f"command line: an override is not valid YAML: {err.problem}") from None
    except (ConfigKeyError, ValidationError) as err:
        raise _wrap(err, "command line") from None
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _yaml_error(err: yaml.MarkedYAMLError, source: str) -> ConfigError:
    """A YAML syntax error as one line: the file, the line and column, and what is wrong."""
    mark = err.problem_mark
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    return ConfigError(f"{where}: YAML syntax error: {err.problem or err.context}")


def _is_list_item(key: str) -> bool:
    head, _, tail = key.partition(".")
    return head == "scaling" and tail.startswith("progressive")


def config_from_dict(data: dict[str, Any]) -> DictConfig:
    """Rebuild a validated config from a plain dict (as stored in a checkpoint)."""
    cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.create(data))
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    """The config as YAML, interpolations (``${pl.start_hours}``) resolved."""
    return OmegaConf.to_yaml(cfg, resolve=True)


# ---------------------------------------------------------------------------------------------
# Validation: each rule names the key, the value and what is allowed.


def _check(cfg: DictConfig, key: str, ok: Any, allowed: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None or (isinstance(value, float) and math.isnan(value)) or not ok(value):
        raise ConfigError(f"key '{key}': got {value!r}, expected {allowed}")


def validate(cfg: DictConfig) -> None:
    """Reject impossible values before any work starts."""
    pos = lambda v: v > 0  # noqa: E731
    nonneg = lambda v: v >= 0  # noqa: E731
    unit = lambda v: 0 <= v < 1  # noqa: E731

    _check(cfg, "data.max_batch_seconds", pos, "a positive number of seconds")
    _check(cfg, "data.num_buckets", pos, "a positive integer")
    _check(cfg, "data.min_duration", nonneg, "seconds >= 0")
    _check(cfg, "data.max_duration", lambda v: v > cfg.data.min_duration,
           f"seconds > data.min_duration ({cfg.data.min_duration})")
    _check(cfg, "data.max_duration", lambda v: v <= cfg.data.max_batch_seconds,
           f"seconds <= data.max_batch_seconds ({cfg.data.max_batch_seconds}), so every utterance fits a batch")
    _check(cfg, "data.num_workers", nonneg, "an integer >= 0")
    _check(cfg, "data.max_bad_fraction", lambda v: 0 <= v < 1, "a fraction in [0, 1)")
    _check(cfg, "data.speed_perturb", lambda v: len(set(v)) == len(v) and all(0.5 <= f <= 2.0 for f in v),
           "distinct speed factors in [0.5, 2], e.g. [0.9, 1.0, 1.1], or [] for none")
    if not cfg.data.dev_splits:
        raise ConfigError("key 'data.dev_splits': expected at least one split name")

    _check(cfg, "tokenizer.vocab_size", lambda v: v >= 32, "an integer >= 32")

    _check(cfg, "features.sample_rate", pos, "a positive sample rate in Hz")
    _check(cfg, "features.n_mels", pos, "a positive integer")
    _check(cfg, "features.win_ms", pos, "positive milliseconds")
    _check(cfg, "features.hop_ms", lambda v: 0 < v <= cfg.features.win_ms,
           f"milliseconds in (0, features.win_ms={cfg.features.win_ms}]")

    for key in ("freq_masks", "freq_width", "time_masks", "time_width"):
        _check(cfg, f"specaug.{key}", nonneg, "an integer >= 0")
    _check(cfg, "specaug.time_ratio", lambda v: 0 < v <= 1, "a fraction in (0, 1]")
    _check(cfg, "specaug.start_hours", nonneg, "hours >= 0")

    for key in ("d_model", "num_layers", "num_heads", "ffn_dim", "conv_kernel"):
        _check(cfg, f"model.{key}", pos, "a positive integer")
    _check(cfg, "model.d_model", lambda v: v % cfg.model.num_heads == 0,
           f"a multiple of model.num_heads ({cfg.model.num_heads})")
    _check(cfg, "model.conv_kernel", lambda v: v % 2 == 1, "an odd kernel size")
    _check(cfg, "model.pos_conv_kernel", pos, "a positive kernel size in encoder frames")
    _check(cfg, "model.pos_conv_groups", lambda v: v > 0 and cfg.model.d_model % v == 0,
           f"a positive divisor of model.d_model ({cfg.model.d_model})")
    for key in ("dropout", "attention_dropout", "layerdrop"):
        _check(cfg, f"model.{key}", unit, "a probability in [0, 1)")

    _check(cfg, "optim.lr", pos, "a positive learning rate")
    _check(cfg, "optim.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
           "two values in [0, 1), e.g. [0.9, 0.98]")
    _check(cfg, "optim.eps", pos, "a positive epsilon")
    _check(cfg, "optim.weight_decay", nonneg, "a value >= 0")
    _check(cfg, "optim.momentum", unit, "a momentum in [0, 1)")
    _check(cfg, "optim.grad_clip", nonneg, "a norm >= 0 (0 disables clipping)")

    _check(cfg, "schedule.total_hours", pos, "positive hours of audio")
    _check(cfg, "schedule.warmup_hours", lambda v: 0 <= v <= cfg.schedule.total_hours,
           f"hours in [0, schedule.total_hours={cfg.schedule.total_hours}]")
    _check(cfg, "schedule.decay_start_hours", nonneg, "hours >= 0")
    _check(cfg, "schedule.step_boundaries_hours", lambda v: list(v) == sorted(v) and all(b >= 0 for b in v),
           "increasing hours >= 0")
    _check(cfg, "schedule.step_factor", lambda v: 0 < v <= 1, "a factor in (0, 1]")
    _check(cfg, "schedule.final_lr_ratio", lambda v: 0 <= v <= 1, "a fraction in [0, 1]")

    _check(cfg, "scaling.reference_seconds", pos, "positive seconds of audio per optimizer step")
    hours = [stage.hours for stage in cfg.scaling.progressive]
    if hours and (hours != sorted(hours) or hours[0] != 0):
        raise ConfigError(f"key 'scaling.progressive': stage hours {hours} must increase and start at 0")
    for i in range(len(cfg.scaling.progressive)):
        _check(cfg, f"scaling.progressive.{i}.accum_steps", pos, "a positive integer")
    if cfg.scaling.progressive and cfg.train.accum_steps != 1:
        raise ConfigError(f"key 'train.accum_steps': got {cfg.train.accum_steps}, but scaling.progressive "
                          "sets the accumulation of every stage; leave train.accum_steps at 1")

    _check(cfg, "ema.rho", lambda v: 0 < v < 1, "a momentum in (0, 1)")

    _check(cfg, "pl.start_hours", nonneg, "hours >= 0")
    _check(cfg, "pl.unlabeled_per_labeled", pos, "a positive ratio")
    _check(cfg, "pl.unlabeled_weight", nonneg, "a weight >= 0")
    _check(cfg, "pl.min_tokens", pos, "an integer >= 1")
    _check(cfg, "pl.min_confidence", unit, "a probability in [0, 1)")
    for key in ("dropout", "layerdrop"):
        if OmegaConf.select(cfg, f"pl.{key}") is not None:
            _check(cfg, f"pl.{key}", unit, "a probability in [0, 1) or null")
    if cfg.pl.enabled and not cfg.data.unlabeled_split:
        raise ConfigError("key 'data.unlabeled_split': pl.enabled=true needs an unlabeled split name")

    _check(cfg, "train.accum_steps", pos, "a positive integer")
    _check(cfg, "train.log_every_steps", pos, "a positive integer")
    _check(cfg, "train.eval_every_hours", nonneg, "hours >= 0 (0 disables)")
    _check(cfg, "train.checkpoint_every_hours", pos, "positive hours")
    _check(cfg, "train.keep_last", pos, "an integer >= 1")
    _check(cfg, "train.max_nonfinite_in_row", pos, "an integer >= 1")
    _check(cfg, "train.max_minutes", nonneg, "minutes >= 0 (0: no limit)")
    _check(cfg, "train.stop_hours", nonneg, "hours >= 0 (0: schedule.total_hours)")
    _check(cfg, "train.collective_timeout_s", pos, "positive seconds")
    _check(cfg, "train.signal_check_steps", pos, "an integer >= 1")
    _check_schedule_points(cfg)

    _check(cfg, "eval.batch_seconds", pos, "positive seconds")
    _check(cfg, "eval.beam_size", pos, "a positive integer")


def _check_schedule_points(cfg: DictConfig) -> None:
    """A point that training never reaches is a mistake, not a choice: the phase it starts
    would silently never happen."""
    total = cfg.schedule.total_hours
    before_end = f"hours < schedule.total_hours ({total})"
    if cfg.pl.enabled:
        _check(cfg, "pl.start_hours", lambda v: v < total, before_end)
    if cfg.specaug.policy != "none":
        _check(cfg, "specaug.start_hours", lambda v: v < total, before_end)
    _check(cfg, "schedule.decay_start_hours", lambda v: v < total, before_end)
    _check(cfg, "schedule.step_boundaries_hours", lambda v: all(b < total for b in v), before_end)
    for i in range(len(cfg.scaling.progressive)):
        _check(cfg, f"scaling.progressive.{i}.hours", lambda v: v < total, before_end)
    _check(cfg, "train.stop_hours", lambda v: v <= total, f"hours <= schedule.total_hours ({total})")
