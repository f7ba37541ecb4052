"""LibriSpeech folders to JSONL manifests (``asr prepare``).

One manifest line per kept utterance, sorted by id::

    {"id": "1272-128104-0000", "audio": "/abs/path.flac", "duration": 5.855, "num_samples": 93680,
     "sample_rate": 16000, "text": "MISTER QUILTER ...", "speaker": "1272", "chapter": "128104"}

A split folder with audio but no ``*.trans.txt`` at all is *unlabeled*: its ``text`` is "" and,
when ``<corpus>/held-out/<split>.txt`` exists (Kaldi text, ``<id> <TEXT>``), its transcripts go
into ``truth`` so pseudo-labels can be scored; training never reads ``truth``.

Preparing a corpus must not stop on one bad file in 281k: every bad entry is skipped, named
with its reason on stderr and in ``<split>.summary.json``. Only headers are read
(``soundfile.info``); audio is decoded only to resample it (``resample=True``), and the
resampled FLAC goes to ``<out>/resampled/<split>/`` with the manifest pointing there.

Prepared splits can be combined into one (``--combine train-860=train-clean-360+train-other-500``):
the semi-supervised setup pools the 860 h that are used without their transcripts into one
unlabeled split, so shards, sampler and trainer see a single split.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from asr.data.audio import AudioDecodeError, encode_flac, read_audio_file, resample
from asr.fileio import CountProgress, parallel_map, remove_orphaned_temporaries, write_atomic
from asr.text.normalize import normalize_librispeech

AUDIO_SUFFIXES = (".flac", ".wav")
MANIFEST_KEYS = ("id", "audio", "duration", "num_samples", "sample_rate", "text", "speaker", "chapter")
# Imported corpora (Kaldi, NeMo, lhotse) have no chapters and may have no speakers.
REQUIRED_KEYS = ("id", "audio", "duration", "num_samples", "sample_rate", "text")

# Reasons an entry is skipped; the summary counts entries by these strings.
UNREADABLE = "unreadable audio"
NO_TRANSCRIPT = "audio without transcript"
NO_AUDIO = "transcript without audio"
EMPTY_TEXT = "empty text"
SAMPLE_RATE = "wrong sample rate"
NOT_MONO = "not mono"
DUPLICATE = "duplicate id"


# ---------------------------------------------------------------------------------------------
# Manifest reading


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Parse a manifest; an invalid line raises ValueError naming ``file:line`` and the problem."""
    return [entry for _, entry in read_manifest_lines(path)]


def read_manifest_lines(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """Each manifest line as (raw text, parsed entry): the raw text is what shards hash."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON object ({err.msg})") from None
            missing = [k for k in REQUIRED_KEYS if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise ValueError(f"{path}:{number}: missing keys {', '.join(missing)}; "
                                 f"expected {', '.join(REQUIRED_KEYS)} (speaker, chapter optional)")
            rows.append((line, entry))
    return rows


# ---------------------------------------------------------------------------------------------
# Scanning a LibriSpeech folder


@dataclass
class SplitSummary:
    """What preparing one split kept and skipped (written as ``<split>.summary.json``)."""

    split: str
    labeled: bool
    utterances: int = 0
    seconds: float = 0.0
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"id", "reason", "detail"}

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(s["reason"] for s in self.skipped).items()))

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "labeled": self.labeled, "utterances": self.utterances,
                "hours": self.seconds / 3600.0, "skipped_by_reason": self.skipped_by_reason,
                "skipped": self.skipped}


@dataclass(frozen=True)
class _Probe:
    """One audio file to check (and maybe resample); picklable for worker processes."""

    id: str
    path: str
    sample_rate: int
    resample_to: str | None  # FLAC destination when a wrong rate should be resampled


def find_librispeech_root(corpus: str | Path) -> Path:
    """``corpus/LibriSpeech`` if it exists, else ``corpus`` itself (the LibriSpeech folder)."""
    corpus = Path(corpus)
    if not corpus.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {corpus}")
    return corpus / "LibriSpeech" if (corpus / "LibriSpeech").is_dir() else corpus


def find_splits(root: Path) -> list[str]:
    """Sub-folders of ``root`` that hold audio files anywhere below them."""
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and any(p.suffix in AUDIO_SUFFIXES for p in d.rglob("*")))


def _read_kaldi_text(path: Path) -> dict[str, str]:
    """``<id> <TEXT>`` lines (LibriSpeech trans.txt, Kaldi text); a bare id has text ""."""
    texts = {}
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid UTF-8 ({err.reason} at byte {err.start}); "
                             "re-encode the file as UTF-8") from None
        parts = line.strip().split(maxsplit=1)
        if parts:
            texts[parts[0]] = parts[1] if len(parts) > 1 else ""
    return texts


def _probe_audio(probe: _Probe) -> tuple[dict[str, Any] | None, str, str]:
    """Header facts of one file -> (fields, "", "") or (None, reason, detail)."""
    try:
        info = sf.info(probe.path)
    except (sf.LibsndfileError, RuntimeError) as err:
        return None, UNREADABLE, str(err)
    if info.channels != 1:
        return None, NOT_MONO, f"{info.channels} channels"
    if info.frames <= 0:
        return None, UNREADABLE, "no samples"
    path, rate, frames = probe.path, info.samplerate, info.frames
    if rate != probe.sample_rate:
        if probe.resample_to is None:
            return None, SAMPLE_RATE, f"{rate} Hz, expected {probe.sample_rate} Hz (use --resample)"
        try:
            samples, rate = read_audio_file(probe.path, key=probe.id)
        except AudioDecodeError as err:
            return None, UNREADABLE, err.reason
        samples = resample(samples, rate, probe.sample_rate)
        write_atomic(probe.resample_to, encode_flac(samples, probe.sample_rate))
        path, rate, frames = probe.resample_to, probe.sample_rate, len(samples)
    return {"audio": path, "duration": frames / rate, "num_samples": frames, "sample_rate": rate}, "", ""


def prepare_split(
    split_dir: Path,
    out_dir: Path,
    *,
    held_out: Path | None = None,
    sample_rate: int = 16000,
    resample: bool = False,
    jobs: int = 0,
) -> SplitSummary:
    """Write ``<out_dir>/manifests/<split>.jsonl`` and its summary for one split folder."""
    split = split_dir.name
    audio: dict[str, Path] = {}
    transcripts: dict[str, str] = {}
    transcript_files = sorted(split_dir.rglob("*.trans.txt"))
    summary = SplitSummary(split, labeled=bool(transcript_files))

    def skip(utt_id: str, reason: str, detail: str = "") -> None:
        summary.skipped.append({"id": utt_id, "reason": reason, "detail": detail})

    for path in sorted(p for p in split_dir.rglob("*") if p.suffix in AUDIO_SUFFIXES):
        if path.stem in audio:
            skip(path.stem, DUPLICATE, f"{path}; {audio[path.stem]} is kept")
        else:
            audio[path.stem] = path.resolve()
    for path in transcript_files:
        for utt_id, text in _read_kaldi_text(path).items():
            if utt_id in transcripts:
                skip(utt_id, DUPLICATE, f"second transcript in {path}; the first is kept")
            else:
                transcripts[utt_id] = text
    truths = _read_kaldi_text(held_out) if held_out is not None and not summary.labeled else {}

    kept: list[tuple[str, str]] = []  # (id, normalized text; "" when unlabeled)
    for utt_id in sorted(audio.keys() | transcripts.keys()):
        text = normalize_librispeech(transcripts.get(utt_id, ""))
        if utt_id not in audio:
            skip(utt_id, NO_AUDIO, f"listed in a trans.txt of {split_dir}")
        elif summary.labeled and utt_id not in transcripts:
            skip(utt_id, NO_TRANSCRIPT, str(audio[utt_id]))
        elif summary.labeled and not text:
            skip(utt_id, EMPTY_TEXT, f"transcript {transcripts[utt_id]!r}")
        else:
            kept.append((utt_id, text))

    resampled_dir = (out_dir / "resampled" / split).resolve()
    probes = [_Probe(utt_id, str(audio[utt_id]), sample_rate,
                     str(resampled_dir / f"{utt_id}.flac") if resample else None)
              for utt_id, _ in kept]
    if resample:
        resampled_dir.mkdir(parents=True, exist_ok=True)
    results = parallel_map(_probe_audio, probes, jobs=jobs,
                           progress=CountProgress(f"prepare {split}", len(probes)))

    lines = []
    for (utt_id, text), (facts, reason, detail) in zip(kept, results, strict=True):
        if facts is None:
            skip(utt_id, reason, f"{audio[utt_id]}: {detail}")
            continue
        path = audio[utt_id]
        entry = {"id": utt_id, **facts, "text": text}
        if utt_id in truths:
            entry["truth"] = normalize_librispeech(truths[utt_id])
        entry |= {"speaker": path.parent.parent.name, "chapter": path.parent.name}
        lines.append(json.dumps(entry, ensure_ascii=False))
        summary.utterances += 1
        summary.seconds += facts["duration"]
    summary.skipped.sort(key=lambda s: (s["reason"], s["id"]))

    write_split_manifest(out_dir, split, lines, summary)
    return summary


def write_split_manifest(out_dir: Path, split: str, lines: list[str], summary: SplitSummary) -> None:
    """``out_dir/manifests/<split>.jsonl`` and its summary, each written atomically, and the
    first skipped entries on stderr (all of them are in the summary)."""
    manifest_dir = out_dir / "manifests"
    manifest_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(manifest_dir / f"{split}.jsonl", "".join(line + "\n" for line in lines))
    write_atomic(manifest_dir / f"{split}.summary.json", json.dumps(summary.to_json(), indent=1) + "\n")
    for s in summary.skipped[:20]:
        print(f"prepare {split}: skipped {s['id']}: {s['reason']} ({s['detail']})", file=sys.stderr)
    if len(summary.skipped) > 20:
        print(f"prepare {split}: ... {len(summary.skipped) - 20} more skipped, see "
              f"{manifest_dir / (split + '.summary.json')}", file=sys.stderr)


def remove_killed_runs_files(out: str | Path) -> None:
    """Temporary manifests and resampled files that a killed ``asr prepare`` left behind."""
    for folder in ("manifests", "resampled"):
        for path in remove_orphaned_temporaries(Path(out) / folder):
            print(f"prepare: removed {path}, left by a run that was killed", file=sys.stderr)


def prepare_corpus(
    corpus: str | Path,
    out: str | Path,
    splits: Iterable[str] | None = None,
    sample_rate: int = 16000,
    resample: bool = False,
    jobs: int = 0,
    combine: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, SplitSummary]:
    """Manifests for the splits of a LibriSpeech folder (default: every split found), then one
    per ``combine`` entry (name -> parts: splits prepared now or before, see :func:`combine_manifests`)."""
    root = find_librispeech_root(corpus)
    found = find_splits(root)
    wanted = list(splits) if splits else found
    if not wanted:
        raise FileNotFoundError(f"no split folders with audio in {root}")
    unknown = [s for s in wanted if s not in found]
    if unknown:
        raise FileNotFoundError(f"splits {', '.join(unknown)} not found in {root}; "
                                f"found: {', '.join(found) or 'none'}")
    if sample_rate <= 0:
        raise ValueError(f"--sample-rate must be a positive rate in Hz, got {sample_rate}")
    remove_killed_runs_files(out)
    manifest_dir = Path(out) / "manifests"
    prepared = [p.name.removesuffix(".jsonl") for p in manifest_dir.glob("*.jsonl")]
    for name, parts in (combine or {}).items():  # a typo fails now, not after hours of preparing
        check_combine(name, parts, available=[*wanted, *prepared], where=manifest_dir)
        if name in wanted:
            raise ValueError(f"--combine {name}: a split of that name is being prepared from {root}")
    held_out_dirs = [Path(corpus) / "held-out", root.parent / "held-out"]
    summaries = {}
    for split in wanted:
        held_out = next((d / f"{split}.txt" for d in held_out_dirs if (d / f"{split}.txt").is_file()), None)
        summaries[split] = prepare_split(root / split, Path(out), held_out=held_out,
                                         sample_rate=sample_rate, resample=resample, jobs=jobs)
    for name, parts in (combine or {}).items():
        summaries[name] = combine_manifests(manifest_dir, name, parts)
    print(format_summary(summaries.values()))
    return summaries


# ---------------------------------------------------------------------------------------------
# Combining prepared splits


def combine_manifests(manifest_dir: str | Path, name: str, splits: Sequence[str]) -> SplitSummary:
    """Write ``<manifest_dir>/<name>.jsonl``: the lines of the prepared ``<split>.jsonl`` of each
    split, sorted by id, and its summary.

    Lines are copied verbatim (the shard writer hashes them), so a combined split shards exactly
    like its parts. An id found in two parts fails, naming both: the parts would otherwise
    disagree about the utterance.
    """
    manifest_dir = Path(manifest_dir)
    check_combine(name, splits, available=[p.name.removesuffix(".jsonl") for p in manifest_dir.glob("*.jsonl")],
                  where=manifest_dir)

    first_split: dict[str, str] = {}
    rows: list[tuple[str, str]] = []  # (id, raw line)
    summary = SplitSummary(name, labeled=True)
    for split in splits:
        for line, entry in read_manifest_lines(manifest_dir / f"{split}.jsonl"):
            utt_id = entry["id"]
            if utt_id in first_split:
                raise ValueError(f"--combine {name}: utterance {utt_id} is in both {first_split[utt_id]} "
                                 f"and {split}")
            first_split[utt_id] = split
            rows.append((utt_id, line))
            summary.utterances += 1
            summary.seconds += float(entry["duration"])
            summary.labeled &= bool(entry["text"])
    rows.sort()
    write_atomic(manifest_dir / f"{name}.jsonl", "".join(line + "\n" for _, line in rows))
    write_atomic(manifest_dir / f"{name}.summary.json",
                 json.dumps(summary.to_json() | {"combined_from": list(splits)}, indent=1) + "\n")
    return summary


def check_combine(name: str, splits: Sequence[str], available: Iterable[str], where: Path) -> None:
    """Reject a combination that cannot be written, before any work: a name that is not a plain
    file name or is one of its parts, fewer than two distinct parts, a part not ``available``."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"--combine: split name {name!r} must be a plain, non-empty file name")
    if len(splits) < 2 or len(set(splits)) != len(splits):
        raise ValueError(f"--combine {name}: expected two or more distinct splits, got {'+'.join(splits)}")
    if name in splits:
        raise ValueError(f"--combine {name}: the combined split cannot also be one of its parts")
    missing = sorted(set(splits) - set(available))
    if missing:
        raise FileNotFoundError(f"--combine {name}: no manifest of {', '.join(missing)} in {where} "
                                f"(prepare it in this or an earlier `asr prepare`)")


def format_summary(summaries: Iterable[SplitSummary]) -> str:
    """Markdown table: utterances, hours and skipped entries by reason, per split."""
    rows = ["| split | labeled | utterances | hours | skipped |", "| --- | --- | ---: | ---: | --- |"]
    for s in summaries:
        skipped = ", ".join(f"{reason}: {n}" for reason, n in s.skipped_by_reason.items()) or "none"
        rows.append(f"| {s.split} | {'yes' if s.labeled else 'no'} | {s.utterances} | "
                    f"{s.seconds / 3600:.3f} | {skipped} |")
    return "\n".join(rows)
