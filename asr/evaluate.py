"""Decoding whole splits: the dev WER during training and ``asr eval``.

Utterances are sorted by duration and cut into batches of at most ``batch_seconds`` padded
audio; rank ``r`` of ``W`` decodes batches ``r, r + W, ...`` and the hypotheses are gathered,
so any number of processes gives the same numbers as one. Audio comes from shards (through
the index), a manifest, or a LibriSpeech folder (scanned with ``asr prepare``'s code).
"""

from __future__ import annotations

import json
import pickle
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from asr.checkpoint import (
    average_state_dicts,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
)
from asr.config import config_from_dict
from asr.data.audio import read_audio_file
from asr.data.features import LogMelFeatures
from asr.data.manifest import prepare_split, read_manifest
from asr.data.shards import SplitIndex, load_index, read_audio
from asr.decode import BeamDecoder, BeamOptions, greedy_decode
from asr.model import build_model
from asr.progress import Progress
from asr.runtime import setup_runtime
from asr.text.tokenizer import Tokenizer, tokenizer_from_dict
from asr.wer import format_rate, score_corpus, word_errors

# ----------------------------------------------------------------------------------------------
# What to decode


@dataclass(frozen=True)
class EvalSet:
    """A split to decode: ids, reference texts, speakers, durations and a way to read audio."""

    name: str
    keys: list[str]
    texts: list[str]
    speakers: list[str]
    durations: np.ndarray  # seconds
    read: Callable[[int], np.ndarray]  # utterance number -> float32 samples at 16 kHz

    def __len__(self) -> int:
        return len(self.keys)


def eval_set_from_index(index: SplitIndex) -> EvalSet:
    n = len(index)
    return EvalSet(index.split, [index.key(i) for i in range(n)], [index.text(i) for i in range(n)],
                   [index.speaker(i) for i in range(n)], np.asarray(index.duration, dtype=np.float64),
                   lambda i: read_audio(index, i))


def eval_set_from_manifest(path: Path) -> EvalSet:
    rows = read_manifest(path)
    if not rows:
        raise ValueError(f"{path}: the manifest has no utterances")
    paths = [row["audio"] for row in rows]
    return EvalSet(path.name.removesuffix(".jsonl"), [row["id"] for row in rows],
                   [row["text"] for row in rows], [str(row["speaker"]) for row in rows],
                   np.array([row["duration"] for row in rows], dtype=np.float64),
                   lambda i: read_audio_file(paths[i], key=rows[i]["id"])[0])


def open_eval_set(source: Path, split: str, work_dir: Path) -> EvalSet:
    """Find ``split`` in a shards folder, a manifests folder/file or a LibriSpeech corpus."""
    if source.is_file() and source.suffix == ".jsonl":
        return eval_set_from_manifest(source)
    for candidate in (source / split / "index.npz", source / "shards" / split / "index.npz"):
        if candidate.is_file():
            return eval_set_from_index(load_index(candidate.parent))
    for candidate in (source / f"{split}.jsonl", source / "manifests" / f"{split}.jsonl"):
        if candidate.is_file():
            return eval_set_from_manifest(candidate)
    for root in (source / "LibriSpeech", source):
        if (root / split).is_dir():
            prepare_split(root / split, work_dir, held_out=None)
            return eval_set_from_manifest(work_dir / "manifests" / f"{split}.jsonl")
    raise FileNotFoundError(
        f"split '{split}' not found under {source}: expected {split}/index.npz (shards), "
        f"{split}.jsonl (manifests) or LibriSpeech/{split}/ (corpus)")


# ----------------------------------------------------------------------------------------------
# Decoding


class _Batches(Dataset):
    """Map-style dataset of whole padded batches, read by DataLoader workers."""

    def __init__(self, eval_set: EvalSet, batches: list[np.ndarray]) -> None:
        self.eval_set, self.batches = eval_set, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        members = self.batches[b].tolist()
        waves = [torch.from_numpy(self.eval_set.read(i)) for i in members]
        lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
        return members, torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths


def length_sorted_batches(durations: np.ndarray, batch_seconds: float) -> list[np.ndarray]:
    """Batches of similar length, each at most ``batch_seconds`` of padded audio (longest first)."""
    order = np.argsort(-durations, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(durations[order[start]], 1e-3)
        size = max(1, int(batch_seconds // longest))
        batches.append(order[start:start + size])
        start += size
    return batches


@torch.no_grad()
def decode_set(model: torch.nn.Module, features: LogMelFeatures, eval_set: EvalSet, tokenizer: Tokenizer,
               device: torch.device, *, rank: int = 0, world_size: int = 1, batch_seconds: float = 200.0,
               autocast_dtype: torch.dtype | None = None, beam: BeamDecoder | None = None,
               num_workers: int = 1, show_progress: bool = False) -> dict[str, str]:
    """Hypotheses for every utterance of ``eval_set`` (gathered on every rank when distributed);
    ``show_progress`` reports this rank's decoded audio with rate and ETA."""
    was_training = model.training
    model.eval()
    batches = length_sorted_batches(eval_set.durations, batch_seconds)[rank::world_size]
    # a generator of its own: DataLoader otherwise draws its worker seed from the global RNG,
    # and a dev evaluation would shift the training run's dropout stream (no exact resume)
    loader = DataLoader(_Batches(eval_set, batches), batch_size=None, num_workers=num_workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator())
    hyps: dict[str, str] = {}
    progress = Progress(f"decode {eval_set.name}", float(sum(eval_set.durations[b].sum() for b in batches)),
                        unit="s") if show_progress else None
    for members, waves, lengths in loader:
        waves, lengths = waves.to(device, non_blocking=True), lengths.to(device, non_blocking=True)
        feats, feat_lengths = features(waves, lengths)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            log_probs, out_lengths = model(feats, feat_lengths)
        if beam is not None:
            texts = beam(log_probs.float(), out_lengths)
        else:
            texts = [tokenizer.decode(ids) for ids in greedy_decode(log_probs, out_lengths, tokenizer.blank_id)]
        hyps.update((eval_set.keys[i], text) for i, text in zip(members, texts, strict=True))
        if progress is not None:
            progress.update(float(eval_set.durations[list(members)].sum()))
    if progress is not None:
        progress.close()
    model.train(was_training)
    if world_size > 1:
        shards: list[dict[str, str] | None] = [None] * world_size
        dist.all_gather_object(shards, hyps)
        hyps = {k: v for shard in shards for k, v in (shard or {}).items()}
    return hyps


def dev_wer(model: torch.nn.Module, features: LogMelFeatures, index: SplitIndex, tokenizer: Tokenizer,
            device: torch.device, *, rank: int = 0, world_size: int = 1, batch_seconds: float = 200.0,
            autocast_dtype: torch.dtype | None = None) -> float:
    """Greedy corpus WER (fraction) of a shard split, scored as ``asr eval`` scores; the same
    value on every rank."""
    eval_set = eval_set_from_index(index)
    hyps = decode_set(model, features, eval_set, tokenizer, device, rank=rank, world_size=world_size,
                      batch_seconds=batch_seconds, autocast_dtype=autocast_dtype, num_workers=0)
    errors, words = word_errors(eval_set.texts, [hyps[k] for k in eval_set.keys])
    return errors / words if words else float("nan")


# ----------------------------------------------------------------------------------------------
# asr eval


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this project."""


def load_model_for_eval(checkpoint: Path, weights: str = "student",
                        average_last: int = 1) -> tuple[torch.nn.Module, Tokenizer, dict]:
    """Build the model of a checkpoint with its student or teacher weights (optionally averaged).

    A corrupt or foreign file is one clear :class:`CheckpointError` (a missing file stays
    FileNotFoundError): ``asr eval``, ``asr transcribe`` and ``asr export`` all load through here.
    """
    try:
        return _load_model_for_eval(Path(checkpoint), weights, average_last)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, TypeError, AttributeError,
            RuntimeError) as err:  # RuntimeError: torch.load of a non-torch file, or a shape mismatch
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{checkpoint}: not a readable asr checkpoint ({type(err).__name__}: "
                              f"{first_line})") from None


def _load_model_for_eval(checkpoint: Path, weights: str, average_last: int) -> tuple[torch.nn.Module, Tokenizer, dict]:
    path = resolve_checkpoint(checkpoint)
    payload = load_checkpoint(path)
    cfg = config_from_dict(payload["config"])
    tokenizer = tokenizer_from_dict(payload["tokenizer"])
    if payload.get(weights) is None:
        raise ValueError(f"{path}: checkpoint has no {weights} weights"
                         + (" (the teacher is created at the pseudo-label start)" if weights == "teacher" else ""))
    state = payload[weights]
    step = payload["train_state"]["step"]
    if average_last > 1:  # the chosen checkpoint and the periodic ones just before it
        updates = payload["train_state"]["updates"]
        saved = [p for p in list_checkpoints(path.parent) if int(p.stem.removeprefix("update-")) <= updates]
        saved = saved[-average_last:]
        if len(saved) < average_last:
            raise ValueError(f"--average-last {average_last}: only {len(saved)} periodic checkpoints "
                             f"up to step {step} in {path.parent}")
        state = average_state_dicts(saved, weights)
    model = build_model(cfg.model, n_mels=cfg.features.n_mels, vocab_size=tokenizer.vocab_size)
    model.load_state_dict(state)
    return model, tokenizer, {"config": cfg, "step": step, "path": path}


def evaluate_checkpoint(checkpoint: Path, data: Path, *, splits: Sequence[str] | None, weights: str,
                        average_last: int, decoder: str | None, beam_size: int | None, lexicon: Path | None,
                        lm: Path | None, lm_weight: float | None, word_score: float | None,
                        batch_seconds: float | None, device: str, out_dir: Path, name: str | None) -> dict[str, dict]:
    """Decode and score each split; write per-split reports under ``out_dir/<split>/``."""
    from asr.wer import write_reports

    model, tokenizer, info = load_model_for_eval(checkpoint, weights, average_last)
    cfg = info["config"]
    rt = setup_runtime(device, cfg.train.precision)
    model.to(rt.device)
    features = LogMelFeatures.from_config(cfg.features).to(rt.device)
    decoder = decoder or cfg.eval.decoder
    beam = None
    if decoder == "beam":
        beam = BeamDecoder(tokenizer, BeamOptions(
            beam_size=beam_size or cfg.eval.beam_size,
            lm_weight=cfg.eval.lm_weight if lm_weight is None else lm_weight,
            word_score=cfg.eval.word_score if word_score is None else word_score),
            lexicon=lexicon or cfg.eval.lexicon, lm=lm or cfg.eval.lm)
    name = name or f"{Path(info['path']).parent.parent.name}/{weights}@{info['step']}"
    results: dict[str, dict] = {}
    for split in splits or list(cfg.data.dev_splits):
        eval_set = open_eval_set(Path(data), split, Path(out_dir) / split / "prepared")
        t0 = time.perf_counter()
        hyps = decode_set(model, features, eval_set, tokenizer, rt.device, rank=rt.rank,
                          world_size=rt.world_size, batch_seconds=batch_seconds or cfg.eval.batch_seconds,
                          autocast_dtype=rt.autocast_dtype, beam=beam, show_progress=rt.is_main)
        seconds = time.perf_counter() - t0
        if rt.is_main:
            score = score_corpus(dict(zip(eval_set.keys, eval_set.texts, strict=True)), hyps,
                                 speakers=dict(zip(eval_set.keys, eval_set.speakers, strict=True)))
            write_reports(score, Path(out_dir) / split, name=f"{name} {split}")
            summary = score.summary()
            summary.update(name=name, split=split, decode_seconds=seconds, audio_hours=float(eval_set.durations.sum() / 3600),
                           checkpoint=str(info["path"]), weights=weights, decoder=decoder)
            (Path(out_dir) / split / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            results[split] = summary
            print(f"{split}: WER {format_rate(summary['wer'])}% CER {format_rate(summary['cer'])}% "
                  f"({summary['n_words']} words, {summary['n_utterances']} utts, "
                  f"{summary['audio_hours']:.2f} h in {seconds:.1f} s)", flush=True)
    if rt.world_size > 1:
        dist.barrier()
    return results


def results_table(eval_dirs: Sequence[Path]) -> str:
    """A markdown WER table: one row per ``asr eval`` output folder, one column per split."""
    rows, splits = [], []
    for folder in eval_dirs:
        summaries = sorted(Path(folder).glob("*/summary.json"))
        if not summaries:
            raise FileNotFoundError(f"{folder}: no <split>/summary.json (is it an `asr eval --out` folder?)")
        by_split = {}
        for path in summaries:
            summary = json.loads(path.read_text())
            by_split[summary.get("split", path.parent.name)] = summary
        splits += [s for s in by_split if s not in splits]
        name = next(iter(by_split.values())).get("name", str(folder))
        rows.append((name, by_split))
    lines = ["| system | " + " | ".join(f"{s} WER %" for s in splits) + " |",
             "| --- | " + " | ".join("---:" for _ in splits) + " |"]
    for name, by_split in rows:
        cells = [format_rate(by_split[s]["wer"]) if s in by_split else "" for s in splits]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
