"""The experiment folder: the splits a run reads, what it continues from, its tokenizer.

A run is bound to ``train.exp_dir``: its resolved config, tokenizer, checkpoints and logs live
there, and re-running the same command continues from its last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from asr.checkpoint import load_checkpoint, resolve_checkpoint
from asr.config import DataConfig, TokenizerConfig
from asr.data.shards import SplitIndex, load_index
from asr.runtime import Runtime
from asr.state import check_payload
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
    return indices


def checkpoint_to_continue(cfg: DictConfig, exp_dir: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """This run's own last checkpoint (``train.resume``), else ``train.init_from``'s, else none."""
    last = exp_dir / "checkpoints" / "last.pt"
    source = last if cfg.train.resume and last.exists() else None
    if source is None and cfg.train.init_from:
        source = resolve_checkpoint(cfg.train.init_from)
    if source is None:
        return None, None
    payload = load_checkpoint(source)
    check_payload(payload, str(source))
    return payload, source


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
                if old.get(k) != new.get(k) and k not in ("dropout", "layerdrop", "path", "pos_conv_impl")}
        if diff:
            raise ValueError(f"cannot resume: {section} differs from the checkpoint's config: "
                             + ", ".join(f"{section}.{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items())))
