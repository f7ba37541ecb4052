"""Tar shards of FLAC utterances and the compact per-split index that locates them.

Layout of one split (``asr shard`` output)::

    <split>/shard-000000.tar    WebDataset members: <key>.flac (the FLAC file), <key>.json
    <split>/shard-000000.json   record of what the shard holds (for up-to-date checks)
    <split>/index.npz           every utterance's shard, byte range, duration and texts

The index lets the sampler plan batches from durations alone and lets a loader worker read
exactly the bytes of the utterances it was given (``os.pread`` of one byte range), so no
process scans a tar or decodes audio it does not use. Strings are stored as one utf-8 blob
plus offsets per column: the 281k utterances of LibriSpeech are a few dozen arrays, not a
million Python objects, which keeps the index small on disk, fast to load, and cheap to
share with forked DataLoader workers.

Up-to-date rule for re-runs: shards are planned from the manifest alone (in manifest order,
cut at the target size or utterance count). A shard is rewritten unless its tar exists with
the size its record names and the record's hash equals the hash of (format version, the
manifest lines the shard holds, each source file's size and modification time). Editing,
adding or removing a manifest line therefore rewrites the shard holding it (and, because
shard boundaries move, the shards after it); touching nothing rewrites nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import sys
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from asr.data.audio import AudioDecodeError, decode_audio, encode_flac, read_audio_file
from asr.data.manifest import UNREADABLE, read_manifest_lines
from asr.fileio import TMP_MARK, CountProgress, atomic_path, parallel_map, write_atomic

INDEX_FILE = "index.npz"
INDEX_FORMAT_VERSION = 1
SHARD_FORMAT_VERSION = 1  # bump when member bytes or records change: every shard is rewritten
SHARD_PATTERN = "shard-{:06d}.tar"
BAD_KEY = "id unusable as a tar key"  # skip reason, next to asr.data.manifest's


# ---------------------------------------------------------------------------------------------
# Reading: the index and shard members


@dataclass(frozen=True, eq=False)
class _Strings:
    """N strings as one utf-8 byte blob + int64 offsets [N + 1]: two arrays, not N objects."""

    data: np.ndarray  # uint8 [total bytes]
    offsets: np.ndarray  # int64 [N + 1]

    @classmethod
    def pack(cls, strings: Iterable[str]) -> _Strings:
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")

    def to_list(self) -> list[str]:
        """Every string, decoding the blob once instead of once a string."""
        blob, ends = self.data.tobytes(), self.offsets.tolist()
        return [blob[a:b].decode("utf-8") for a, b in itertools.pairwise(ends)]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.offsets.nbytes


class _OpenShards:
    """Read-only shard file descriptors, opened lazily by the process that reads.

    DataLoader workers are forked (or spawned) after the index is built; a descriptor opened
    in the parent must not be shared, so the cache belongs to one pid: a forked child drops
    (and closes its copies of) the parent's descriptors, and a pickled copy starts empty.
    At most ``max_open`` descriptors stay open; the oldest is closed first.
    """

    def __init__(self, max_open: int = 256) -> None:
        self.max_open = max_open
        self._pid = os.getpid()
        self._fds: dict[int, int] = {}

    def fd(self, shard: int, path: Path) -> int:
        if self._pid != os.getpid():
            self.close()
            self._pid = os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            if len(self._fds) >= self.max_open:
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self._fds[shard] = fd
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __del__(self) -> None:
        if self._pid == os.getpid():
            self.close()


@dataclass(frozen=True, eq=False)
class SplitIndex:
    """Where every utterance of one split lives, and what it says; no audio is loaded.

    Utterance ``i`` is the FLAC file at bytes ``[offset[i], offset[i] + size[i])`` of shard
    file ``shard_names[shard[i]]`` in ``root``. Build one with :func:`build_index` or
    :func:`load_index`; read audio with :func:`read_member` / :func:`read_audio`.
    """

    split: str
    root: Path  # folder holding the shard files
    shard_names: tuple[str, ...]
    shard: np.ndarray  # int32 [N]  shard number of each utterance
    offset: np.ndarray  # int64 [N]  byte offset of the .flac member's data in its shard
    size: np.ndarray  # int64 [N]  byte size of that data
    duration: np.ndarray  # float32 [N] seconds
    num_samples: np.ndarray  # int64 [N]
    sample_rate: int  # Hz, the same for every utterance of the split
    _keys: _Strings
    _texts: _Strings  # "" for unlabeled utterances
    _speakers: _Strings
    _truths: _Strings | None  # held-out transcripts of an unlabeled split, if known
    _truth_known: np.ndarray | None  # bool [N]: utterance i has a held-out transcript
    _files: _OpenShards = field(default_factory=_OpenShards, repr=False)

    def __len__(self) -> int:
        return len(self.shard)

    def key(self, i: int) -> str:
        return self._keys[i]

    def text(self, i: int) -> str:
        """Normalized transcript; "" in an unlabeled split."""
        return self._texts[i]

    @property
    def texts(self) -> list[str]:
        """Every normalized transcript in index order (e.g. to build a tokenizer)."""
        return self._texts.to_list()

    def truth(self, i: int) -> str | None:
        """Held-out transcript of an unlabeled utterance (for scoring pseudo-labels), else None."""
        if self._truths is None or self._truth_known is None or not self._truth_known[i]:
            return None
        return self._truths[i]

    def speaker(self, i: int) -> str:
        return self._speakers[i]

    def shard_path(self, i: int) -> Path:
        return self.root / self.shard_names[int(self.shard[i])]

    @property
    def has_truth(self) -> bool:
        return self._truths is not None

    @property
    def hours(self) -> float:
        return float(self.duration.sum(dtype=np.float64)) / 3600.0

    @property
    def nbytes(self) -> int:
        """Resident bytes of all arrays (what a forked worker shares copy-on-write)."""
        arrays = (self.shard, self.offset, self.size, self.duration, self.num_samples)
        total = sum(a.nbytes for a in arrays) + self._keys.nbytes + self._texts.nbytes
        total += self._speakers.nbytes
        if self._truths is not None and self._truth_known is not None:
            total += self._truths.nbytes + self._truth_known.nbytes
        return total

    def close(self) -> None:
        """Close this process's shard file descriptors (reopened on the next read)."""
        self._files.close()


def read_member(index: SplitIndex, i: int) -> bytes:
    """The FLAC file bytes of utterance ``i``: one positioned read of its shard.

    ``os.pread`` has no shared file position, so threads may call this concurrently; each
    process opens its own descriptors on first use. A short read (truncated shard) raises
    :class:`AudioDecodeError`, like a member that does not decode.
    """
    shard = int(index.shard[i])
    path = index.root / index.shard_names[shard]
    size, offset = int(index.size[i]), int(index.offset[i])
    data = os.pread(index._files.fd(shard, path), size, offset)
    if len(data) != size:
        raise AudioDecodeError(index.key(i), str(path),
                               f"shard truncated: read {len(data)} of {size} bytes at offset {offset}")
    return data


def read_audio(index: SplitIndex, i: int) -> np.ndarray:
    """Utterance ``i`` decoded to float32 mono samples [num_samples[i]] at index.sample_rate.

    Raises :class:`AudioDecodeError` (key + shard path) for a corrupt or truncated member,
    including one that decodes to a length other than the indexed one (libsndfile may stop
    early at damaged frames instead of failing).
    """
    key, source = index.key(i), str(index.shard_path(i))
    samples = decode_audio(read_member(index, i), expected_sample_rate=index.sample_rate,
                           key=key, source=source)
    if len(samples) != index.num_samples[i]:
        raise AudioDecodeError(key, source, f"decoded {len(samples)} samples, the index says "
                               f"{int(index.num_samples[i])}")
    return samples


def build_index(
    split: str,
    root: str | Path,
    shard_names: Sequence[str],
    *,
    keys: Sequence[str],
    texts: Sequence[str],
    speakers: Sequence[str],
    shard: Sequence[int] | np.ndarray,
    offset: Sequence[int] | np.ndarray,
    size: Sequence[int] | np.ndarray,
    duration: Sequence[float] | np.ndarray,
    num_samples: Sequence[int] | np.ndarray,
    sample_rate: int = 16000,
    truths: Sequence[str | None] | None = None,
) -> SplitIndex:
    """Assemble an index from per-utterance columns (all of length N, in shard order).

    ``truths`` is given for an unlabeled split with held-out transcripts (None entries for
    utterances without one); leave it None otherwise.
    """
    n = len(keys)
    columns = {"texts": texts, "speakers": speakers, "shard": shard, "offset": offset, "size": size,
               "duration": duration, "num_samples": num_samples}
    if truths is not None:
        columns["truths"] = truths
    for name, column in columns.items():
        if len(column) != n:
            raise ValueError(f"index of split {split!r}: {name} has {len(column)} entries, keys has {n}")
    truth_known = None if truths is None else np.array([t is not None for t in truths], dtype=bool)
    index = SplitIndex(
        split=split,
        root=Path(root),
        shard_names=tuple(shard_names),
        shard=np.asarray(shard, dtype=np.int32),
        offset=np.asarray(offset, dtype=np.int64),
        size=np.asarray(size, dtype=np.int64),
        duration=np.asarray(duration, dtype=np.float32),
        num_samples=np.asarray(num_samples, dtype=np.int64),
        sample_rate=int(sample_rate),
        _keys=_Strings.pack(keys),
        _texts=_Strings.pack(texts),
        _speakers=_Strings.pack(speakers),
        _truths=None if truths is None else _Strings.pack(t or "" for t in truths),
        _truth_known=truth_known,
    )
    _check_index(index, f"index of split {split!r}")
    return index


def _check_index(index: SplitIndex, where: str) -> None:
    if len(index) and not 0 <= int(index.shard.min()) <= int(index.shard.max()) < len(index.shard_names):
        raise ValueError(f"{where}: shard numbers outside [0, {len(index.shard_names)})")
    if len(index) and (int(index.offset.min()) < 0 or int(index.size.min()) <= 0):
        raise ValueError(f"{where}: negative member offsets or empty members")
    if index.sample_rate <= 0:
        raise ValueError(f"{where}: sample rate {index.sample_rate} Hz is not positive")


_STRING_COLUMNS = ("keys", "texts", "speakers", "truths")
_NUMBER_COLUMNS = {"shard": np.int32, "offset": np.int64, "size": np.int64,
                   "duration": np.float32, "num_samples": np.int64}


def save_index(index: SplitIndex, split_dir: str | Path | None = None) -> Path:
    """Write ``index.npz`` (zip-compressed numpy arrays, no pickles) atomically; return its path."""
    split_dir = Path(split_dir) if split_dir is not None else index.root
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(INDEX_FORMAT_VERSION, dtype=np.int64),
        "split": np.array(index.split),
        "sample_rate": np.array(index.sample_rate, dtype=np.int64),
        "shard_names": np.array(index.shard_names, dtype=str) if index.shard_names else np.zeros(0, "<U1"),
    }
    arrays.update({name: getattr(index, name) for name in _NUMBER_COLUMNS})
    for name in _STRING_COLUMNS:
        column = getattr(index, f"_{name}")
        if column is not None:
            arrays[f"{name}_data"], arrays[f"{name}_offsets"] = column.data, column.offsets
    if index._truth_known is not None:
        arrays["truth_known"] = index._truth_known
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = split_dir / INDEX_FILE
    write_atomic(path, buffer.getbuffer())
    return path


def load_index(split_dir: str | Path) -> SplitIndex:
    """Load ``<split_dir>/index.npz``; shards are looked up in ``split_dir`` (it may be moved)."""
    split_dir = Path(split_dir)
    path = split_dir / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no shard index in {split_dir}: expected {path} (written by `asr shard`)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path}: not a readable shard index ({err}); re-run `asr shard`") from None
    version = int(arrays.get("format_version", -1))
    if version != INDEX_FORMAT_VERSION:
        raise ValueError(f"{path}: index format version {version}, this code reads version "
                         f"{INDEX_FORMAT_VERSION}; re-run `asr shard`")
    required = ["split", "sample_rate", "shard_names", *_NUMBER_COLUMNS]
    required += [f"{name}_{part}" for name in _STRING_COLUMNS[:3] for part in ("data", "offsets")]
    missing = [name for name in required if name not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {', '.join(missing)}; re-run `asr shard`")
    columns = {}
    for name in _STRING_COLUMNS:
        if f"{name}_data" in arrays:
            columns[f"_{name}"] = _Strings(arrays[f"{name}_data"], arrays[f"{name}_offsets"])
    index = SplitIndex(
        split=str(arrays["split"]),
        root=split_dir,
        shard_names=tuple(str(name) for name in arrays["shard_names"]),
        sample_rate=int(arrays["sample_rate"]),
        **{name: arrays[name].astype(dtype, copy=False) for name, dtype in _NUMBER_COLUMNS.items()},
        _keys=columns["_keys"],
        _texts=columns["_texts"],
        _speakers=columns["_speakers"],
        _truths=columns.get("_truths"),
        _truth_known=arrays.get("truth_known"),
    )
    n = len(index)
    lengths = [len(getattr(index, name)) for name in _NUMBER_COLUMNS] + [len(c) for c in columns.values()]
    if any(length != n for length in lengths):
        raise ValueError(f"{path}: columns of different lengths {sorted(set(lengths))}; re-run `asr shard`")
    _check_index(index, str(path))
    return index


# ---------------------------------------------------------------------------------------------
# Writing: manifests -> shards -> index


@dataclass(frozen=True)
class _ShardJob:
    """One shard to bring up to date; picklable for worker processes."""

    path: str  # final tar path
    lines: tuple[str, ...]  # the manifest lines it holds, in order
    digest: str  # sha256 of (format, lines, source file stats): the up-to-date key


@dataclass
class ShardReport:
    """What sharding one split did (printed as a table row)."""

    split: str
    shards: int = 0
    written: int = 0
    up_to_date: int = 0
    utterances: int = 0
    seconds: float = 0.0
    tar_bytes: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"id", "reason", "detail"}


def _record_path(tar_path: str | Path) -> Path:
    return Path(tar_path).with_suffix(".json")


def _source_stat(path: str) -> tuple[int, int] | None:
    """(size in bytes, modification time in ns) of a source file, None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _plan_shards(rows: list[tuple[str, dict]], split_dir: Path, *, shard_bytes: float,
                 shard_utterances: int) -> list[_ShardJob]:
    """Cut the manifest, in order, into shards of exactly ``shard_utterances`` lines (when > 0)
    or of about ``shard_bytes`` of source audio files (re-encoded members come out smaller)."""
    stats = [_source_stat(entry["audio"]) for _, entry in rows]
    bounds, filled = [0], 0
    for i, stat in enumerate(stats):
        size = stat[0] if stat else 0
        full = i - bounds[-1] >= shard_utterances if shard_utterances > 0 else filled + size > shard_bytes
        if i > bounds[-1] and full:
            bounds.append(i)
            filled = 0
        filled += size
    bounds.append(len(rows))
    jobs = []
    for number, (start, end) in enumerate(itertools.pairwise(bounds)):
        digest = hashlib.sha256(f"asr-shard-v{SHARD_FORMAT_VERSION}\n".encode())
        for (line, _), stat in zip(rows[start:end], stats[start:end], strict=True):
            digest.update(f"{line}\n{stat}\n".encode())
        jobs.append(_ShardJob(str(split_dir / SHARD_PATTERN.format(number)),
                              tuple(line for line, _ in rows[start:end]), digest.hexdigest()))
    return jobs


def _flac_bytes(entry: dict[str, Any]) -> bytes:
    """The member bytes: the source file itself when it is FLAC at the manifest's rate (no
    decode, bit-exact), else the decoded samples encoded as 16-bit FLAC."""
    path, key, rate = entry["audio"], entry["id"], int(entry["sample_rate"])
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioDecodeError(key, path, str(err)) from None
    if info.samplerate != rate or info.channels != 1 or info.frames != int(entry["num_samples"]):
        raise AudioDecodeError(key, path, f"{info.samplerate} Hz, {info.channels} channels, "
                               f"{info.frames} samples; the manifest says {rate} Hz mono, "
                               f"{entry['num_samples']} samples (re-run `asr prepare`)")
    if info.format == "FLAC":
        with open(path, "rb") as f:
            return f.read()
    samples, _ = read_audio_file(path, key=key)
    return encode_flac(samples, rate)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append a regular file member; return the byte offset of its data in the tar."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: reproducible bytes
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - (len(data) + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE


def _is_up_to_date(job: _ShardJob) -> dict[str, Any] | None:
    """The shard's record when its tar matches it and the record matches the plan, else None."""
    try:
        record = json.loads(_record_path(job.path).read_text(encoding="utf-8"))
        if record["sha256"] == job.digest and os.path.getsize(job.path) == record["tar_bytes"]:
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_shard(job: _ShardJob) -> dict[str, Any]:
    """Write one shard (temp name + rename) and its record; or reuse an up-to-date one.

    The record lists, per manifest line, ``[offset, size]`` of the FLAC data in the tar or
    ``{"reason", "detail"}`` when that utterance was skipped, so the index is rebuilt from
    records without reading a tar.
    """
    record = _is_up_to_date(job)
    if record is not None:
        return record | {"written": False}
    members: list[list[int] | dict[str, str]] = []
    with atomic_path(job.path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for line in job.lines:
            entry = json.loads(line)
            key = entry["id"]
            if not key or any(c in key for c in "./\\"):  # WebDataset splits names at the first "."
                members.append({"reason": BAD_KEY, "detail": f"{key!r} is empty or holds '.', '/' or '\\'"})
                continue
            try:
                data = _flac_bytes(entry)
            except AudioDecodeError as err:
                members.append({"reason": UNREADABLE, "detail": f"{err.source}: {err.reason}"})
                continue
            members.append([_add_member(tar, f"{key}.flac", data), len(data)])
            meta = {k: v for k, v in entry.items() if k != "audio"}
            _add_member(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    record = {"format": SHARD_FORMAT_VERSION, "sha256": job.digest,
              "tar_bytes": os.path.getsize(job.path), "members": members}
    write_atomic(_record_path(job.path), json.dumps(record) + "\n")
    return record | {"written": True}


def _remove_stale(split_dir: Path, keep: set[str]) -> None:
    """Delete shards and records of an earlier, longer plan and temp files of killed runs."""
    for path in split_dir.iterdir():
        stale_shard = path.name.startswith("shard-") and path.suffix in (".tar", ".json")
        if (stale_shard and path.with_suffix(".tar").name not in keep) or TMP_MARK in path.name:
            path.unlink()


def shard_split(
    manifest: str | Path,
    split_dir: str | Path,
    *,
    shard_mb: float = 256.0,
    shard_utterances: int = 0,
    jobs: int = 0,
) -> ShardReport:
    """Bring ``split_dir``'s shards up to date with one manifest, then write its index."""
    manifest, split_dir = Path(manifest), Path(split_dir)
    split = manifest.name.removesuffix(".jsonl")
    if shard_mb <= 0 and shard_utterances <= 0:
        raise ValueError(f"shard size: --shard-mb must be > 0 (got {shard_mb}) unless --shard-utterances > 0")
    if shard_utterances < 0:
        raise ValueError(f"--shard-utterances must be >= 0 (0: cut by --shard-mb), got {shard_utterances}")
    rows = read_manifest_lines(manifest)
    rates = sorted({int(entry["sample_rate"]) for _, entry in rows})
    if len(rates) > 1:
        raise ValueError(f"{manifest}: mixed sample rates {rates} Hz; a split's shards share one rate "
                         "(re-run `asr prepare --resample`)")
    split_dir.mkdir(parents=True, exist_ok=True)
    plan = _plan_shards(rows, split_dir, shard_bytes=shard_mb * 1e6, shard_utterances=shard_utterances)
    _remove_stale(split_dir, {Path(job.path).name for job in plan})
    records = parallel_map(_write_shard, plan, jobs=jobs,
                           progress=CountProgress(f"shard {split}", len(plan)))

    report = ShardReport(split, shards=len(plan))
    kept: list[tuple[int, list[int], dict[str, Any]]] = []  # (shard number, [offset, size], entry)
    for number, (job, record) in enumerate(zip(plan, records, strict=True)):
        report.written += record["written"]
        report.tar_bytes += record["tar_bytes"]
        for line, member in zip(job.lines, record["members"], strict=True):
            entry = json.loads(line)
            if isinstance(member, dict):
                report.skipped.append({"id": entry["id"], **member})
            else:
                kept.append((number, member, entry))
    report.up_to_date = report.shards - report.written
    entries = [entry for _, _, entry in kept]
    report.utterances = len(entries)
    report.seconds = sum(float(e["duration"]) for e in entries)
    truths = [e.get("truth") for e in entries]
    index = build_index(
        split, split_dir, [Path(job.path).name for job in plan],
        keys=[e["id"] for e in entries],
        texts=[e["text"] for e in entries],
        speakers=[str(e["speaker"]) for e in entries],
        shard=[number for number, _, _ in kept],
        offset=[member[0] for _, member, _ in kept],
        size=[member[1] for _, member, _ in kept],
        duration=[e["duration"] for e in entries],
        num_samples=[e["num_samples"] for e in entries],
        sample_rate=rates[0] if rates else 16000,
        truths=truths if any(t is not None for t in truths) else None,
    )
    save_index(index, split_dir)
    for s in report.skipped:
        print(f"shard {split}: skipped {s['id']}: {s['reason']} ({s['detail']})", file=sys.stderr)
    return report


def shard_manifests(
    manifests: str | Path,
    out: str | Path,
    splits: Iterable[str] | None = None,
    shard_mb: float = 256.0,
    shard_utterances: int = 0,
    jobs: int = 0,
) -> dict[str, ShardReport]:
    """Shard every ``<split>.jsonl`` of a manifest folder into ``<out>/<split>/``."""
    manifests = Path(manifests)
    if not manifests.is_dir():
        raise FileNotFoundError(f"manifest folder not found: {manifests} (written by `asr prepare`)")
    found = sorted(p.name.removesuffix(".jsonl") for p in manifests.glob("*.jsonl"))
    wanted = list(splits) if splits else found
    unknown = [s for s in wanted if s not in found]
    if unknown or not wanted:
        raise FileNotFoundError(f"no manifest for {', '.join(unknown) or 'any split'} in {manifests}; "
                                f"found: {', '.join(found) or 'none'}")
    reports = {split: shard_split(manifests / f"{split}.jsonl", Path(out) / split, shard_mb=shard_mb,
                                  shard_utterances=shard_utterances, jobs=jobs)
               for split in wanted}
    print(format_report(reports.values()))
    return reports


def format_report(reports: Iterable[ShardReport]) -> str:
    """Markdown table: shards written / up to date, utterances, hours, MB, skipped."""
    rows = ["| split | shards | written | up to date | utterances | hours | MB | skipped |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in reports:
        skipped = ", ".join(f"{k}: {n}" for k, n in sorted(Counter(s["reason"] for s in r.skipped).items()))
        rows.append(f"| {r.split} | {r.shards} | {r.written} | {r.up_to_date} | {r.utterances} | "
                    f"{r.seconds / 3600:.3f} | {r.tar_bytes / 1e6:.1f} | {skipped or 'none'} |")
    return "\n".join(rows)
