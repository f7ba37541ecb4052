"""``asr transcribe``: a checkpoint turns the user's audio files into text.

Audio of any rate and channel count is averaged to mono and resampled to the model's rate.
Files longer than ``chunk_seconds`` are cut at the quietest 20 ms near each chunk end (so a
cut rarely falls inside a word), decoded as separate utterances and joined, with word times
shifted back by each chunk's start. Chunks of many files are sorted by length and batched by
padded seconds, as in ``asr eval``, on the GPU when there is one.

Word times and confidences come from the CTC frames: the decoded tokens are force-aligned to
the log-probabilities (``torchaudio.functional.forced_align``, so greedy and beam output get
the same treatment), a word spans its tokens' frames, one frame lasts ``hop_ms`` x the model's
subsampling, and its confidence is the mean posterior of its tokens' frames.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from asr.data.audio import resample
from asr.data.features import LogMelFeatures
from asr.decode import BeamDecoder, BeamOptions, greedy_decode
from asr.evaluate import load_model_for_eval
from asr.progress import Progress
from asr.runtime import wants_cuda
from asr.text.tokenizer import Tokenizer

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".sph")
OUTPUT_FORMATS = ("text", "kaldi", "json")
GROUP_SECONDS = 1800.0  # audio read and decoded together: bounds memory on large folders
QUIET_FRAME_SECONDS = 0.02
SEARCH_SECONDS = 2.0  # how far before a chunk end the cut may move to a quieter spot


# ----------------------------------------------------------------------------------------------
# Finding and reading audio


def collect_audio(inputs: Sequence[str | Path]) -> list[Path]:
    """Audio files of ``inputs``: files, folders (searched recursively, sorted) or list files
    (one path a line, relative to the list's folder; blank lines and ``#`` comments skipped)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            if not found:
                raise FileNotFoundError(f"{item}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
            files += found
        elif item.is_file() and item.suffix.lower() in AUDIO_SUFFIXES:
            files.append(item)
        elif item.is_file():
            files += _read_list(item)
        else:
            raise FileNotFoundError(f"audio not found: {item}")
    return files


def _read_list(path: Path) -> list[Path]:
    files = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            file = Path(line) if Path(line).is_absolute() else path.parent / line
            if not file.is_file():
                raise FileNotFoundError(f"{path}:{number}: audio file {line!r} not found (expected one audio "
                                        "path a line, relative to the list's folder)")
            files.append(file)
    return files


def load_mono(path: str | Path, sample_rate: int) -> np.ndarray:
    """float32 samples of a file, channels averaged, resampled to ``sample_rate``."""
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"{path}: cannot read audio ({err})") from None
    if samples.shape[0] == 0:
        raise ValueError(f"{path}: no samples")
    return resample(np.ascontiguousarray(samples.mean(axis=1)), rate, sample_rate)


def chunk_starts(samples: np.ndarray, sample_rate: int, chunk_seconds: float) -> list[int]:
    """Start sample of each chunk: ~``chunk_seconds`` each, cut at the quietest 20 ms of the
    last 2 s before the limit; a remainder under 1 s joins the chunk before it."""
    chunk, search = round(chunk_seconds * sample_rate), round(SEARCH_SECONDS * sample_rate)
    frame = max(1, round(QUIET_FRAME_SECONDS * sample_rate))
    starts, start = [0], 0
    while len(samples) - start > chunk:
        lo = start + max(chunk - search, chunk // 2)
        window = samples[lo:start + chunk]
        frames = len(window) // frame
        energy = np.square(window[: frames * frame]).reshape(frames, frame).sum(axis=1)
        cut = lo + int(np.argmin(energy)) * frame + frame // 2
        if len(samples) - cut < sample_rate:
            break
        starts.append(cut)
        start = cut
    return starts


# ----------------------------------------------------------------------------------------------
# Word timings


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the file
    end: float
    confidence: float  # mean posterior of the word's token frames, in [0, 1]


@dataclass
class Transcript:
    audio: str
    id: str
    duration: float  # seconds
    text: str = ""
    words: list[Word] = field(default_factory=list)


def word_timings(log_probs: Tensor, text: str, tokenizer: Tokenizer, frame_seconds: float,
                 offset: float = 0.0) -> list[Word]:
    """Words of ``text`` with times and confidences, by forced alignment to ``log_probs`` [T, V]."""
    import torchaudio.functional as F

    ids = tokenizer.encode(text) if text else []
    if not ids:
        return []
    targets = torch.tensor([ids], dtype=torch.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchaudio's deprecation notice for its alignment API
        try:
            frames, scores = F.forced_align(log_probs[None].float().cpu(), targets, blank=tokenizer.blank_id)
        except RuntimeError:  # more tokens than frames: no alignment exists
            return []
        spans = F.merge_tokens(frames[0], scores[0].exp(), blank=tokenizer.blank_id)
    words, current = [], []
    boundary = tokenizer.word_boundary
    for span in spans:
        piece = tokenizer.tokens[span.token]
        starts_word = boundary is None and piece.startswith("\u2581")
        if piece == boundary or (starts_word and current):
            words.append(current)
            current = []
        if piece != boundary:
            current.append(span)
    words.append(current)
    out = []
    for group in (g for g in words if g):
        word = tokenizer.decode([s.token for s in group])
        if not word:
            continue
        out.append(Word(word, round(offset + group[0].start * frame_seconds, 3),
                        round(offset + group[-1].end * frame_seconds, 3),
                        round(float(np.mean([s.score for s in group])), 4)))
    return out


# ----------------------------------------------------------------------------------------------
# Decoding


class Transcriber:
    """A checkpoint's model, features and decoder on one device, ready for many files."""

    def __init__(self, checkpoint: Path, *, weights: str = "student", average_last: int = 1,
                 device: str = "auto", decoder: str = "greedy", beam_size: int = 50,
                 lexicon: Path | None = None, lm: Path | None = None, lm_weight: float = 2.0,
                 word_score: float = 0.0) -> None:
        model, self.tokenizer, info = load_model_for_eval(checkpoint, weights, average_last)
        cfg = info["config"]
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        wants_cuda(device)  # a GPU that is not there: a sentence, not a CUDA traceback
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.features = LogMelFeatures.from_config(cfg.features).to(self.device)
        self.sample_rate = cfg.features.sample_rate
        subsampling = round(3000 / int(model.output_lengths(torch.tensor([3000]))[0]))
        self.frame_seconds = cfg.features.hop_ms / 1000 * subsampling
        self.beam = None
        if decoder == "beam":
            self.beam = BeamDecoder(self.tokenizer, BeamOptions(beam_size=beam_size, lm_weight=lm_weight,
                                                                word_score=word_score), lexicon=lexicon, lm=lm)
        elif decoder != "greedy":
            raise ValueError(f"--decoder {decoder}: allowed values are greedy, beam")

    @torch.no_grad()
    def decode(self, waves: list[np.ndarray]) -> list[tuple[str, Tensor]]:
        """(text, log_probs [T, V] on the CPU) of each waveform, in one batch."""
        lengths = torch.tensor([max(len(w), self.features.win_samples) for w in waves], dtype=torch.long)
        batch = torch.zeros(len(waves), int(lengths.max()))
        for i, w in enumerate(waves):
            batch[i, : len(w)] = torch.from_numpy(w)
        feats, feat_lengths = self.features(batch.to(self.device), lengths.to(self.device))
        log_probs, out_lengths = self.model(feats, feat_lengths)
        if self.beam is not None:
            texts = self.beam(log_probs, out_lengths)
        else:
            texts = [self.tokenizer.decode(ids) for ids in greedy_decode(log_probs, out_lengths,
                                                                         self.tokenizer.blank_id)]
        log_probs = log_probs.cpu()
        return [(text, log_probs[i, :n]) for i, (text, n) in enumerate(zip(texts, out_lengths.tolist(), strict=True))]

    def transcribe(self, files: Sequence[Path], *, chunk_seconds: float = 30.0, batch_seconds: float = 200.0,
                   timings: bool = False) -> list[Transcript]:
        """One :class:`Transcript` per file, in order."""
        from asr.evaluate import length_sorted_batches

        if chunk_seconds <= 0 or batch_seconds <= 0:
            raise ValueError(f"--chunk-seconds and --batch-seconds must be > 0, got {chunk_seconds} and {batch_seconds}")
        total = sum(_duration(f) for f in files)
        out: list[Transcript] = []
        with Progress("transcribe", total, unit="s") as progress:
            for group in _groups(files, GROUP_SECONDS):
                pieces: list[tuple[int, float, np.ndarray]] = []  # (file in group, start s, samples)
                transcripts = []
                for k, path in enumerate(group):
                    samples = load_mono(path, self.sample_rate)
                    transcripts.append(Transcript(str(path), path.stem, len(samples) / self.sample_rate))
                    starts = chunk_starts(samples, self.sample_rate, chunk_seconds)
                    for s, e in zip(starts, [*starts[1:], len(samples)], strict=True):
                        pieces.append((k, s / self.sample_rate, samples[s:e]))
                durations = np.array([len(p[2]) / self.sample_rate for p in pieces])
                results: dict[int, tuple[str, Tensor]] = {}
                for batch in length_sorted_batches(durations, batch_seconds):
                    members = batch.tolist()
                    for i, result in zip(members, self.decode([pieces[i][2] for i in members]), strict=True):
                        results[i] = result
                    progress.update(float(durations[members].sum()))
                for i, (k, start, _) in enumerate(pieces):  # pieces are in file, then time order
                    text, log_probs = results[i]
                    transcript = transcripts[k]
                    transcript.text = " ".join(filter(None, [transcript.text, text]))
                    if timings:
                        transcript.words += word_timings(log_probs, text, self.tokenizer, self.frame_seconds, start)
                out += transcripts
        return out


def _duration(path: Path) -> float:
    try:
        return sf.info(str(path)).duration
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ValueError(f"{path}: cannot read audio ({err})") from None


def _groups(files: Sequence[Path], seconds: float) -> Iterable[list[Path]]:
    group, total = [], 0.0
    for path in files:
        group.append(path)
        total += _duration(path)
        if total >= seconds:
            yield group
            group, total = [], 0.0
    if group:
        yield group


# ----------------------------------------------------------------------------------------------
# Output


def format_transcripts(transcripts: Sequence[Transcript], fmt: str) -> str:
    """``text``: one transcript a line; ``kaldi``: ``<id> <TEXT>``; ``json``: one object a line
    with the words' start/end seconds and confidences."""
    if fmt == "text":
        return "".join(f"{t.text}\n" for t in transcripts)
    if fmt == "kaldi":
        seen: dict[str, str] = {}
        for t in transcripts:
            if t.id in seen:
                raise ValueError(f"--format kaldi: {t.audio} and {seen[t.id]} share the id {t.id!r} "
                                 "(their file name); use --format json or text")
            seen[t.id] = t.audio
        return "".join(f"{t.id} {t.text}".rstrip() + "\n" for t in transcripts)
    if fmt == "json":
        return "".join(json.dumps(asdict(t), ensure_ascii=False) + "\n" for t in transcripts)
    raise ValueError(f"--format {fmt}: allowed values are {', '.join(OUTPUT_FORMATS)}")
