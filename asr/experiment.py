"""The experiment folder: the splits a run reads and its streams over them, what it continues
from, its tokenizer.

A run is bound to ``train.exp_dir``: its resolved config, tokenizer, checkpoints and logs live
there, and re-running the same command continues from its last checkpoint. The folder belongs
to one run at a time (:class:`ExperimentLock`); a fresh start (``train.resume=false``) in a
folder that holds a run is refused rather than mixed into its logs; a damaged ``last.pt``
falls back to the newest intact periodic checkpoint.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from asr.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint
from asr.config import DataConfig, TokenizerConfig
from asr.data.loader import BatchLoader
from asr.data.shards import SplitIndex, load_index
from asr.runtime import Runtime
from asr.state import TrainState, check_payload
from asr.text.tokenizer import Tokenizer, build_tokenizer, load_tokenizer


def load_splits(cfg: DictConfig) -> dict[str, SplitIndex]:
    """The shard index of every split the run reads (training, unlabeled, dev), by name."""
    shards = Path(cfg.data.shards_dir)
    keys = {cfg.data.train_split: "data.train_split"}
    if cfg.pl.enabled:
        keys[cfg.data.unlabeled_split] = "data.unlabeled_split"
    keys.update((name, "data.dev_splits") for name in cfg.data.dev_splits if name not in keys)
    indices = {}
    for name, key in keys.items():
        try:
            indices[name] = load_index(shards / name)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{key}: split '{name}' not found under data.shards_dir={shards}: "
                                    f"{err}") from None
    check_labeled(indices[cfg.data.train_split], "data.train_split")
    return indices


def check_labeled(index: SplitIndex, key: str) -> None:
    """A labeled split with no utterance or no transcript would train on nothing (loss 0)."""
    if len(index) == 0:
        raise ValueError(f"{key}: split '{index.split}' in {index.root} has no utterances")
    if not any(index.texts):
        raise ValueError(f"{key}: split '{index.split}' in {index.root} has no transcripts (all "
                         f"{len(index)} utterances are unlabeled): point {key} at a labeled split")


def check_transcripts(index: SplitIndex, tokenizer: Tokenizer, key: str) -> Callable[[str], bool]:
    """Refuse a split whose transcripts hold a character the tokenizer cannot encode, naming the
    utterance, its file and the character; return the check, for the loader to apply to text
    met later."""
    text_ok = EncodableText(tokenizer)
    texts = index.texts
    bad = sorted(c for c in set("".join(texts)) if not text_ok(c))
    if bad:
        i = next(i for i, text in enumerate(texts) if bad[0] in text)
        raise ValueError(f"{key}: utterance {index.key(i)} (in {index.shard_path(i)}) has {bad[0]!r} "
                         f"(U+{ord(bad[0]):04X}) in its transcript {texts[i]!r}, which the "
                         f"{tokenizer.identity()['kind']} tokenizer cannot encode ({len(bad)} such "
                         f"characters in the split: {''.join(bad)!r}); normalize the text, or build the "
                         f"tokenizer from this split")
    return text_ok


class EncodableText:
    """Whether the tokenizer encodes a text, decided character by character (cached)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._known: dict[str, bool] = {}

    def __call__(self, text: str) -> bool:
        return all(self._encodes(c) for c in set(text))

    def _encodes(self, char: str) -> bool:
        if char not in self._known:
            try:
                self.tokenizer.encode(char)
                self._known[char] = True
            except ValueError:
                self._known[char] = False
        return self._known[char]


def checkpoint_to_continue(cfg: DictConfig, exp_dir: Path, warn: Callable[[str], None] = print
                           ) -> tuple[dict[str, Any] | None, Path | None]:
    """This run's own last checkpoint (``train.resume``), else ``train.init_from``'s, else none.

    An own ``last.pt`` that does not load (truncated, a full disk, a bad copy) falls back to
    the newest periodic checkpoint that does, with a warning: losing a few steps beats losing
    the run.
    """
    ckpt_dir = exp_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    if cfg.train.resume and last.exists():
        for source in [last, *reversed(list_checkpoints(ckpt_dir))]:
            try:
                payload = load_checkpoint(source)
                check_payload(payload, str(source))
            except Exception as err:  # any damage: try the next one
                warn(f"warning: {source} does not load ({type(err).__name__}: {err}); trying an older checkpoint")
                continue
            return payload, source
        raise ValueError(f"{ckpt_dir}: no checkpoint loads (last.pt and every update-*.pt are damaged); "
                         f"start afresh in a new train.exp_dir")
    if not cfg.train.init_from:
        return None, None
    source = resolve_checkpoint(cfg.train.init_from)
    payload = load_checkpoint(source)
    check_payload(payload, str(source))
    return payload, source


def check_fresh_start(cfg: DictConfig, exp_dir: Path) -> None:
    """A run that starts from nothing refuses a folder holding another run's checkpoints or
    logs: pruning and appending would mix the two runs."""
    used = [name for name in ("checkpoints", "metrics.jsonl") if (exp_dir / name).exists()
            and (name != "checkpoints" or list_checkpoints(exp_dir / name) or (exp_dir / name / "last.pt").exists())]
    if used:
        why = "train.resume=false" if not cfg.train.resume else "no checkpoint to resume from"
        raise ValueError(f"train.exp_dir={exp_dir} already holds a run ({' and '.join(used)}), and this one "
                         f"starts afresh ({why}): choose a new train.exp_dir, or delete the folder to start over")


class ExperimentLock:
    """An exclusive lock on ``<exp_dir>/.lock``, held by rank 0 for the run's lifetime.

    A POSIX record lock (``lockf``): released by the kernel when the process ends, however it
    ends, so a killed run never leaves a stale lock, and not inherited by forked DataLoader
    workers. NFS honours it through its lock manager; a filesystem without locks cannot refuse
    a second trainer.
    """

    def __init__(self, exp_dir: Path) -> None:
        exp_dir.mkdir(parents=True, exist_ok=True)
        self.path = exp_dir / ".lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise ValueError(f"train.exp_dir={exp_dir} is in use by another trainer ({holder}); "
                             "wait for it to end, or choose another train.exp_dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # the lock goes with the descriptor
            self._fd = -1


def prepare_tokenizer(tok: TokenizerConfig, data: DataConfig, exp_dir: Path, rt: Runtime) -> Tokenizer:
    """Load the experiment's tokenizer, building it first (rank 0) when it does not exist yet."""
    path = Path(tok.path) if tok.path else exp_dir / "tokenizer"
    if rt.is_main and not (path / "tokenizer.json").exists():
        build_tokenizer(tok.kind, path, texts=load_index(Path(data.shards_dir) / data.train_split).texts,
                        vocab_size=tok.vocab_size, model_type=tok.model_type)
    if rt.world_size > 1:
        dist.barrier()
    return load_tokenizer(path)


def check_compatible(saved: DictConfig, cfg: DictConfig) -> None:
    """Resuming needs the same model, tokenizer and features; everything else may change."""
    for section in ("model", "tokenizer", "features"):
        old = OmegaConf.to_container(saved[section])
        new = OmegaConf.to_container(cfg[section])
        diff = {k: (old.get(k), new.get(k)) for k in set(old) | set(new)
                if old.get(k) != new.get(k) and k not in ("dropout", "layerdrop", "path", "pos_conv_impl", "attention_kernels")}
        if diff:
            raise ValueError(f"cannot resume: {section} differs from the checkpoint's config: "
                             + ", ".join(f"{section}.{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items())))


def make_loaders(cfg: DictConfig, splits: dict[str, SplitIndex], state: TrainState, rt: Runtime,
                 text_ok: Any = None) -> tuple[BatchLoader, BatchLoader | None]:
    """This rank's labeled and unlabeled streams, from the global data positions; what the
    duration filter drops is reported with counts."""
    args = {"rank": rt.rank, "world_size": rt.world_size, "pin_memory": rt.device.type == "cuda"}
    labeled = BatchLoader.from_config(splits[cfg.data.train_split], cfg.data, start=state.labeled,
                                      text_ok=text_ok, **args)
    unlabeled = None
    if cfg.pl.enabled:
        unlabeled = BatchLoader.from_config(splits[cfg.data.unlabeled_split], cfg.data,
                                            start=state.unlabeled, **args)
    for loader in (labeled, unlabeled) if unlabeled else (labeled,):
        copies = len(loader.speeds)
        rt.log(f"data: {loader.index.split} {loader.hours_per_epoch:.2f} h an epoch, "
               f"{loader.utterances_per_epoch} of {len(loader.index) * copies} utterances"
               + (f" ({len(loader.index)} at speeds {', '.join(f'{s:g}' for s in loader.speeds)})" if copies > 1 else "")
               + (f" ({loader.dropped_utterances} outside data.min_duration={cfg.data.min_duration:g} s .. "
                  f"data.max_duration={cfg.data.max_duration:g} s dropped)" if loader.dropped_utterances else ""))
    return labeled, unlabeled
