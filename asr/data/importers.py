"""Other toolkits' data descriptions to this project's manifests (``asr prepare --format``).

Users arrive with a Kaldi data directory (ESPnet, icefall's ``data/`` folders, Kaldi itself),
a NeMo manifest or a lhotse CutSet. Each is read into one list of :class:`Utterance` per split
and written as ``<out>/manifests/<split>.jsonl`` with the same keys as the LibriSpeech scan, so
sharding, training and ``asr eval`` take it unchanged:

- **kaldi**: ``wav.scp`` (``<recording> <file>``), ``text`` (``<utt> <words>``; absent: the
  split is unlabeled), ``utt2spk`` (optional) and ``segments`` (optional,
  ``<utt> <recording> <start s> <end s>``, end -1 = to the end of the file). A folder of such
  folders gives one split each.
- **nemo**: JSON lines with ``audio_filepath``, ``duration``, ``text`` and optional ``offset``;
  relative paths are relative to the manifest's folder, as in NeMo.
- **lhotse**: a CutSet manifest (``cuts.jsonl.gz``), or a folder of lhotse recipe output
  (``*recordings*`` + ``*supervisions*`` manifests) cut into one utterance per supervision.

Shards hold whole mono files at one rate, so an utterance that is a *part* of a file (Kaldi
segments, a NeMo offset, a lhotse cut), has several channels (averaged) or has another rate
(with ``--resample``) is written once as FLAC under ``<out>/audio/<split>/<id>.flac``; every
other utterance points at its original file. ``speaker`` is the utterance id itself when the
source has no speaker (Kaldi's convention without ``utt2spk``); ``chapter`` is omitted.

A malformed line is an error naming ``file:line`` and what was expected, raised before any
manifest is written; an utterance whose audio cannot be used is skipped with its reason, as
in the LibriSpeech scan. Manifests are replaced atomically, so an error leaves the previous
ones whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from asr.data.audio import encode_flac, resample
from asr.data.manifest import (
    DUPLICATE,
    EMPTY_TEXT,
    NO_AUDIO,
    SAMPLE_RATE,
    UNREADABLE,
    SplitSummary,
    combine_manifests,
    format_summary,
    remove_killed_runs_files,
    write_split_manifest,
)
from asr.fileio import CountProgress, parallel_map, write_atomic
from asr.text.normalize import normalize_librispeech

FORMATS = ("librispeech", "kaldi", "nemo", "lhotse")
NEMO_KEYS = ("audio_filepath", "duration", "text")
LHOTSE_SUFFIXES = (".jsonl.gz", ".jsonl", ".json", ".json.gz", ".yaml", ".yml")
_SEGMENT_TOLERANCE = 0.01  # seconds: a "segment" this close to the whole file is the whole file


@dataclass(frozen=True)
class Utterance:
    """One utterance of an imported source: where its audio is and what is said in it."""

    id: str
    path: str  # audio file (absolute)
    text: str  # as given; normalized when written
    speaker: str | None = None
    start: float = 0.0  # seconds into the file
    duration: float | None = None  # seconds; None = to the end of the file
    channel: int | None = None  # None = all channels, averaged


@dataclass(frozen=True)
class _Job:
    """Probe one utterance and, when needed, write its FLAC (picklable for worker processes)."""

    utt: Utterance
    sample_rate: int
    resample: bool
    out_path: str


# ---------------------------------------------------------------------------------------------
# Format detection


def detect_format(source: str | Path) -> str:
    """Which of :data:`FORMATS` ``source`` is, from its names and first line only."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"corpus not found: {source}")
    if source.is_dir():
        if (source / "wav.scp").is_file() or any((d / "wav.scp").is_file() for d in _subdirs(source)):
            return "kaldi"
        if any(_is_lhotse_name(p.name) and ("recordings" in p.name or "cuts" in p.name)
               for p in source.iterdir()):
            return "lhotse"
        return "librispeech"
    if source.name.endswith(".gz") or source.suffix in (".yaml", ".yml"):
        return "lhotse"
    first = _first_json_line(source)
    if first is not None and "audio_filepath" in first:
        return "nemo"
    if first is not None and ("recording" in first or "recording_id" in first or "sources" in first):
        return "lhotse"
    raise ValueError(f"{source}: cannot tell the format from its first line; expected a NeMo manifest "
                     "(JSON lines with audio_filepath, duration, text) or a lhotse manifest "
                     "(name it with --format)")


def _subdirs(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir())


def _is_lhotse_name(name: str) -> bool:
    return name.endswith(LHOTSE_SUFFIXES)


def _first_json_line(path: Path) -> dict | None:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    return None
                return value if isinstance(value, dict) else None
    return None


# ---------------------------------------------------------------------------------------------
# Kaldi


def _kaldi_lines(path: Path, fields: int | None, expected: str,
                 bare_ok: bool = False) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) of a Kaldi table; ``fields`` = exact count, None = id + the rest
    (``bare_ok``: a lone id is allowed, as in a ``text`` line of an empty transcript)."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split() if fields is not None else line.strip().split(maxsplit=1)
            if (fields is not None and len(parts) != fields) or (fields is None and len(parts) < 2
                                                                 and not bare_ok):
                raise ValueError(f"{path}:{number}: expected '{expected}', got {line.rstrip()!r}")
            yield number, parts


def _kaldi_table(path: Path, expected: str, fields: int | None = None,
                 bare_ok: bool = False) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for number, parts in _kaldi_lines(path, fields, expected, bare_ok):
        if parts[0] in table:
            raise ValueError(f"{path}:{number}: id {parts[0]!r} again (first on line {first_line[parts[0]]}); "
                             "expected each id once")
        table[parts[0]] = parts[1:]
        first_line[parts[0]] = number
    return table


def _resolve(path_text: str, base: Path) -> Path:
    """A path from a data file: absolute, else relative to the current folder (Kaldi's recipe
    root), else relative to ``base`` (the data folder)."""
    path = Path(path_text)
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (base / path).resolve()


def read_kaldi_dir(folder: str | Path) -> list[Utterance]:
    """The utterances of one Kaldi data directory (see the module docstring)."""
    folder = Path(folder)
    wav_scp = folder / "wav.scp"
    if not wav_scp.is_file():
        raise FileNotFoundError(f"{folder}: not a Kaldi data directory (no wav.scp)")
    recordings: dict[str, Path] = {}
    for rec, (rest,) in _kaldi_table(wav_scp, "<recording-id> <audio file>").items():
        rest = rest.strip()
        if rest.endswith("|"):
            number = _line_of(wav_scp, rec)
            raise ValueError(f"{wav_scp}:{number}: a command pipeline ({rest!r}); expected "
                             "'<recording-id> <audio file>' (write the audio to files first, e.g. "
                             "with sox, and list the files)")
        recordings[rec] = _resolve(rest, folder)
    texts = ({k: v[0] if v else "" for k, v in _kaldi_table(folder / "text", "<utt-id> <words>", bare_ok=True).items()}
             if (folder / "text").is_file() else {})
    speakers = ({k: v[0] for k, v in _kaldi_table(folder / "utt2spk", "<utt-id> <speaker-id>", 2).items()}
                if (folder / "utt2spk").is_file() else {})
    utts: list[Utterance] = []
    segments = folder / "segments"
    if segments.is_file():
        for number, (utt, rec, start_text, end_text) in _kaldi_lines(
                segments, 4, "<utt-id> <recording-id> <start seconds> <end seconds>"):
            try:
                start, end = float(start_text), float(end_text)
            except ValueError:
                raise ValueError(f"{segments}:{number}: start and end must be seconds, got "
                                 f"{start_text!r} and {end_text!r}") from None
            if rec not in recordings:
                raise ValueError(f"{segments}:{number}: recording {rec!r} is not in {wav_scp}")
            if start < 0 or (end != -1 and end <= start):
                raise ValueError(f"{segments}:{number}: expected 0 <= start < end (or end -1), got "
                                 f"{start_text} {end_text}")
            utts.append(Utterance(utt, str(recordings[rec]), texts.get(utt, ""), speakers.get(utt),
                                  start, None if end == -1 else end - start))
    else:
        utts = [Utterance(rec, str(path), texts.get(rec, ""), speakers.get(rec))
                for rec, path in recordings.items()]
    return utts


def _line_of(path: Path, key: str) -> int:
    with open(path, encoding="utf-8") as f:
        return next((n for n, line in enumerate(f, 1) if line.split(maxsplit=1)[:1] == [key]), 0)


def _kaldi_text_only(folder: Path, utts: Sequence[Utterance]) -> list[str]:
    """Ids with a transcript but no audio entry (reported as skipped)."""
    if not (folder / "text").is_file():
        return []
    have = {u.id for u in utts}
    return [k for k in _kaldi_table(folder / "text", "<utt-id> <words>", bare_ok=True) if k not in have]


# ---------------------------------------------------------------------------------------------
# NeMo


def read_nemo_manifest(path: str | Path) -> list[Utterance]:
    """The utterances of a NeMo manifest; ids are file stems (plus the offset in ms when set)."""
    path = Path(path)
    utts: list[Utterance] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON object ({err.msg}); expected a NeMo "
                                 "manifest line") from None
            missing = [k for k in NEMO_KEYS if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise ValueError(f"{path}:{number}: missing {', '.join(missing)}; expected a NeMo "
                                 f"manifest line with {', '.join(NEMO_KEYS)} (offset optional)")
            try:
                duration = float(entry["duration"])
                offset = float(entry.get("offset") or 0.0)
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{number}: duration and offset must be seconds, got "
                                 f"{entry['duration']!r} and {entry.get('offset')!r}") from None
            if not (duration > 0 and offset >= 0 and math.isfinite(duration)):
                raise ValueError(f"{path}:{number}: expected duration > 0 and offset >= 0, got "
                                 f"{duration} and {offset}")
            if not isinstance(entry["text"], str):
                raise ValueError(f"{path}:{number}: text must be a string, got {entry['text']!r}")
            audio = _resolve_nemo(str(entry["audio_filepath"]), path.parent)
            utt_id = audio.stem + (f"-{round(offset * 1000):08d}" if "offset" in entry else "")
            speaker = entry.get("speaker", entry.get("spk"))
            utts.append(Utterance(utt_id, str(audio), entry["text"],
                                  None if speaker is None else str(speaker), offset, duration))
    return utts


def _resolve_nemo(path_text: str, base: Path) -> Path:
    path = Path(path_text)
    return (path if path.is_absolute() else base / path).resolve()


# ---------------------------------------------------------------------------------------------
# lhotse


def _require_lhotse():
    try:
        import lhotse
    except ImportError as err:
        raise ImportError(f"reading lhotse manifests needs lhotse: pip install lhotse (or pip install "
                          f"-e '.[lhotse]'); import failed with: {err}") from None
    return lhotse


def read_lhotse(source: str | Path) -> list[Utterance]:
    """The utterances of a CutSet file, or of a folder of recordings + supervisions manifests."""
    lhotse = _require_lhotse()
    source = Path(source)
    if source.is_dir():
        recordings = sorted(p for p in source.iterdir() if "recordings" in p.name and _is_lhotse_name(p.name))
        if len(recordings) != 1:
            raise ValueError(f"{source}: expected one *recordings*.jsonl.gz and one *supervisions*.jsonl.gz "
                             f"(lhotse recipe output) or a CutSet file; found {len(recordings)} "
                             "recordings manifests (pass the file of one split)")
        supervisions = recordings[0].parent / recordings[0].name.replace("recordings", "supervisions")
        if not supervisions.is_file():
            raise FileNotFoundError(f"{source}: {supervisions.name} not found beside {recordings[0].name}")
        cuts = lhotse.CutSet.from_manifests(recordings=lhotse.load_manifest(recordings[0]),
                                            supervisions=lhotse.load_manifest(supervisions))
        cuts = cuts.trim_to_supervisions(keep_overlapping=False)
    else:
        try:
            cuts = lhotse.load_manifest(source)
        except Exception as err:  # lhotse raises many kinds; say which file and what was expected
            raise ValueError(f"{source}: not a lhotse manifest ({type(err).__name__}: {err}); expected a "
                             "CutSet such as cuts.jsonl.gz") from None
        if not isinstance(cuts, lhotse.CutSet):
            raise ValueError(f"{source}: a lhotse {type(cuts).__name__}; expected a CutSet (make one with "
                             "CutSet.from_manifests(recordings=..., supervisions=...), or pass the folder "
                             "holding both manifests)")
    return [_cut_utterance(cut, source) for cut in cuts]


def _cut_utterance(cut: Any, source: Path) -> Utterance:
    recording = getattr(cut, "recording", None)
    if recording is None:
        raise ValueError(f"{source}: cut {cut.id} has no recording; expected cuts with audio")
    if len(recording.sources) != 1 or recording.sources[0].type != "file":
        kinds = ", ".join(s.type for s in recording.sources)
        raise ValueError(f"{source}: cut {cut.id}: audio source of type {kinds}; expected one local file "
                         "(a 'file' source)")
    supervisions = sorted(cut.supervisions, key=lambda s: s.start)
    utt_id = supervisions[0].id if len(supervisions) == 1 else cut.id
    text = " ".join(s.text or "" for s in supervisions)
    speakers = {s.speaker for s in supervisions if s.speaker}
    channel = cut.channel if isinstance(getattr(cut, "channel", None), int) and recording.num_channels > 1 else None
    whole = cut.start <= _SEGMENT_TOLERANCE and abs(cut.duration - recording.duration) <= _SEGMENT_TOLERANCE
    return Utterance(utt_id, str(_resolve(recording.sources[0].source, source.parent)), text,
                     speakers.pop() if len(speakers) == 1 else None,
                     0.0 if whole else float(cut.start), None if whole else float(cut.duration), channel)


# ---------------------------------------------------------------------------------------------
# Writing manifests


def _probe(job: _Job) -> tuple[dict[str, Any] | None, str, str]:
    """Header facts (and, for parts, channels or other rates, a written FLAC) of one utterance."""
    utt = job.utt
    try:
        info = sf.info(utt.path)
    except (sf.LibsndfileError, RuntimeError) as err:
        return None, UNREADABLE, str(err)
    rate, frames = info.samplerate, info.frames
    start = round(utt.start * rate)
    stop = frames if utt.duration is None else min(frames, start + round(utt.duration * rate))
    if stop - start <= 0 or start >= frames:
        return None, UNREADABLE, (f"segment {utt.start:.3f}+{utt.duration or 0:.3f} s is outside the file "
                                  f"({frames / rate:.3f} s)")
    if rate != job.sample_rate and not job.resample:
        return None, SAMPLE_RATE, f"{rate} Hz, expected {job.sample_rate} Hz (use --resample)"
    whole = start == 0 and stop == frames
    if whole and info.channels == 1 and rate == job.sample_rate and info.format in ("FLAC", "WAV"):
        return {"audio": utt.path, "duration": frames / rate, "num_samples": frames, "sample_rate": rate}, "", ""
    try:
        samples, _ = sf.read(utt.path, start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        return None, UNREADABLE, str(err)
    if utt.channel is not None:
        if utt.channel >= samples.shape[1]:
            return None, UNREADABLE, f"channel {utt.channel} of a {samples.shape[1]}-channel file"
        mono = samples[:, utt.channel]
    else:
        mono = samples.mean(axis=1)
    mono = resample(np.ascontiguousarray(mono, dtype=np.float32), rate, job.sample_rate)
    write_atomic(job.out_path, encode_flac(mono, job.sample_rate))
    return {"audio": job.out_path, "duration": len(mono) / job.sample_rate, "num_samples": len(mono),
            "sample_rate": job.sample_rate}, "", ""


def write_split(split: str, utts: Sequence[Utterance], out: str | Path, *, sample_rate: int = 16000,
                resample: bool = False, jobs: int = 0, text_only: Sequence[str] = ()) -> SplitSummary:
    """Probe every utterance and write ``<out>/manifests/<split>.jsonl`` and its summary."""
    out = Path(out)
    labeled = any(u.text.strip() for u in utts)
    summary = SplitSummary(split, labeled=labeled)

    def skip(utt_id: str, reason: str, detail: str = "") -> None:
        summary.skipped.append({"id": utt_id, "reason": reason, "detail": detail})

    for utt_id in text_only:
        skip(utt_id, NO_AUDIO, "in text, not in wav.scp or segments")
    seen: set[str] = set()
    kept: list[tuple[Utterance, str]] = []
    for utt in sorted(utts, key=lambda u: u.id):
        text = normalize_librispeech(utt.text)
        if utt.id in seen:
            skip(utt.id, DUPLICATE, f"{utt.path}; the first is kept")
        elif labeled and not text:
            skip(utt.id, EMPTY_TEXT, f"transcript {utt.text!r}")
        else:
            seen.add(utt.id)
            kept.append((utt, text))
    audio_dir = (out / "audio" / split).resolve()
    audio_dir.mkdir(parents=True, exist_ok=True)
    jobs_list = [_Job(u, sample_rate, resample, str(audio_dir / f"{u.id}.flac")) for u, _ in kept]
    results = parallel_map(_probe, jobs_list, jobs=jobs, progress=CountProgress(f"prepare {split}", len(jobs_list)))

    lines = []
    for (utt, text), (facts, reason, detail) in zip(kept, results, strict=True):
        if facts is None:
            skip(utt.id, reason, f"{utt.path}: {detail}")
            continue
        entry = {"id": utt.id, **facts, "text": text, "speaker": utt.speaker or utt.id}
        lines.append(json.dumps(entry, ensure_ascii=False))
        summary.utterances += 1
        summary.seconds += facts["duration"]
    summary.skipped.sort(key=lambda s: (s["reason"], s["id"]))
    if not any(audio_dir.iterdir()):
        audio_dir.rmdir()
    write_split_manifest(out, split, lines, summary)
    return summary


def read_source(fmt: str, source: str | Path, name: str | None = None) -> dict[str, tuple[list[Utterance], list[str]]]:
    """Split name -> (utterances, ids with text but no audio) of a non-LibriSpeech source.

    Everything is parsed before anything is written, so a malformed line leaves the previous
    manifests as they were.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"corpus not found: {source}")
    if fmt == "kaldi":
        folders = [source] if (source / "wav.scp").is_file() else [d for d in _subdirs(source)
                                                                    if (d / "wav.scp").is_file()]
        if not folders:
            raise FileNotFoundError(f"{source}: no wav.scp in it or in its sub-folders (expected a Kaldi "
                                    "data directory: wav.scp, text, utt2spk, optional segments)")
        if name is not None and len(folders) > 1:
            raise ValueError(f"--name {name}: {source} holds {len(folders)} Kaldi data directories; "
                             "--name renames a single one")
        splits = {}
        for folder in folders:
            utts = read_kaldi_dir(folder)
            splits[name or folder.name] = (utts, _kaldi_text_only(folder, utts))
        return splits
    if fmt == "nemo":
        if not source.is_file():
            raise ValueError(f"{source}: expected a NeMo manifest file (JSON lines), got a folder")
        return {name or _stem(source): (read_nemo_manifest(source), [])}
    if fmt == "lhotse":
        return {name or _stem(source): (read_lhotse(source), [])}
    raise ValueError(f"--format {fmt}: allowed values are {', '.join(FORMATS)}")


def _stem(path: Path) -> str:
    """``train_manifest.json`` -> ``train_manifest``; ``cuts_dev.jsonl.gz`` -> ``cuts_dev``."""
    name = path.name
    for suffix in (*LHOTSE_SUFFIXES, ".gz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def import_corpus(fmt: str, source: str | Path, out: str | Path, *, name: str | None = None,
                  splits: Iterable[str] | None = None, sample_rate: int = 16000, resample: bool = False,
                  jobs: int = 0, combine: Mapping[str, Sequence[str]] | None = None) -> dict[str, SplitSummary]:
    """Manifests for a Kaldi, NeMo or lhotse source (then the ``combine`` splits), with a summary."""
    if sample_rate <= 0:
        raise ValueError(f"--sample-rate must be a positive rate in Hz, got {sample_rate}")
    found = read_source(fmt, source, name)
    wanted = list(splits) if splits else list(found)
    unknown = [s for s in wanted if s not in found]
    if unknown:
        raise FileNotFoundError(f"splits {', '.join(unknown)} not found in {source}; found: {', '.join(found)}")
    for split in wanted:
        if not found[split][0]:
            raise ValueError(f"{source}: split {split} has no utterances")
    remove_killed_runs_files(out)
    summaries = {split: write_split(split, found[split][0], out, sample_rate=sample_rate, resample=resample,
                                    jobs=jobs, text_only=found[split][1]) for split in wanted}
    for combined, parts in (combine or {}).items():
        summaries[combined] = combine_manifests(Path(out) / "manifests", combined, parts)
    print(format_summary(summaries.values()))
    return summaries
