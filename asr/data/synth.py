"""Offline synthetic LibriSpeech: espeak-ng voices reading public-domain English text.

The real corpus is a 60 GB download; this one is made on the machine, and has the same
layout, so every later stage (prepare, shard, train, eval) runs unchanged on both. It mirrors
the semi-supervised LibriSpeech setup (a labeled part, a larger unlabeled part):

- ``train-clean``: labeled speech of "clean" speakers (five espeak-ng accents);
- ``train-unlabeled``: more audio and no ``trans.txt``, from new clean speakers *and* new
  "other" speakers, like train-clean-360 + train-other-500. Its true transcripts are kept aside
  in ``held-out/train-unlabeled.txt`` (Kaldi text), to measure pseudo-label quality only;
- ``dev-clean``, ``test-clean``: new speakers of the clean accents;
- ``dev-other``, ``test-other``: new "other" speakers, mostly of accents never heard in
  train-clean (for espeak-ng the real domain shift: a new variant of a known accent only moves
  pitch and formants), the rest with the Klatt glottal source; always reverberant and noisy.

Every split has its own speakers, and no dev/test sentence occurs in a training split.

Presets, in minutes of audio at ``--hours-scale 1`` (speakers in brackets):

| preset | train-clean | train-unlabeled: clean + other | each dev/test split | total |
| --- | ---: | ---: | ---: | ---: |
| tiny | 0.8 (4) | 0.5 (3) + 0.5 (3) | 0.2 (2) | 2.6 min |
| demo | 60 (20) | 60 (20) + 90 (30) | 7 (8) | 4.0 h |
| gpu | 600 (40) | 960 (64) + 1440 (96) | 60 (20) | 54 h |

Split lengths are planned with a length model of espeak-ng and land within a few per cent of
their targets; ``synth.json`` records the measured hours. The same seed gives byte-identical
files whatever the number of jobs: every utterance gets all its parameters and its own seed
before any audio is made.

Tools: espeak-ng (speech, 22.05 kHz) and sox (resampling to 16 kHz); noise and reverberation
are numpy.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf

from asr.data.synth_text import Sentence, load_sentences, split_pools
from asr.fft import fast_fft_length
from asr.fileio import atomic_path, parallel_map, resolve_jobs, write_atomic

SAMPLE_RATE = 16000
"""Hz, LibriSpeech's rate."""

SPLITS = ("train-clean", "train-unlabeled", "dev-clean", "dev-other", "test-clean", "test-other")
UNLABELED_SPLIT = "train-unlabeled"

CLEAN_ACCENTS = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbclan", "en-us-nyc")
HELD_OUT_ACCENTS = ("en-gb-scotland", "en-029", "en-gb-x-gbcwmd")
"""Accents of "other" speakers only: never heard in train-clean."""
FORMANT_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "Denis", "Diogo", "Gene", "Henrique", "Hugo",
    "Mario", "Michael", "Mike", "Nguyen", "anika", "antonio", "aunty", "belinda", "ed",
    "grandma", "grandpa", "gustave", "iven", "linda", "max", "michel", "miguel", "paul",
    "pedro", "quincy", "rob", "robert", "steph", "travis",
)
"""Human-sounding variants of the default formant synthesizer (the robotic and echo ones are left out)."""
KLATT_VARIANTS = ("klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "adam", "benjamin",
                  "david", "edward", "edward2")
"""Variants with a Klatt glottal source: acoustically another synthesizer, for "other" speakers."""

EVAL_FRACTION = 0.08
"""Share of the sentences reserved for dev/test (about 2,800 sentences, 5 h of speech)."""
MIN_SECONDS, MAX_SECONDS = 2.0, 15.0
"""Planned utterance length range."""
UTTERANCES_PER_CHAPTER = 50
PEAK_DBFS = (-9.0, -1.0)
"""Range of the peak level of an utterance."""
NOISE_BANK_SECONDS = 30.0
"""Length of each noise color that utterances take slices of."""
PROGRESS_EVERY_S = 5.0
RENDER_CHUNK = 8
"""Utterances a worker renders per task: amortizes the pickling, keeps progress fine-grained."""
MARKER = ".synth.done"
"""Written last, holding the arguments: a re-run with the same ones has nothing to do."""


@dataclass(frozen=True)
class Condition:
    """How the speakers of one condition talk, and the room they are recorded in."""

    speed_wpm: tuple[int, int]
    """Range of a speaker's central speaking rate; each utterance varies +-SPEED_SPREAD_WPM."""
    pitch: tuple[int, int]
    """Range of a speaker's central espeak-ng pitch (0-99); each utterance +-PITCH_SPREAD."""
    pitch_range_percent: tuple[int, int]
    """Range of a speaker's intonation range (SSML prosody range, % of normal)."""
    max_word_gap_10ms: int
    """Largest pause a speaker leaves between words, in espeak-ng units of 10 ms."""
    snr_db: tuple[float, float]
    """Signal-to-noise ratio of the added noise over the whole utterance."""
    rt60_s: tuple[float, float] | None
    """Reverberation time range (None: no reverberation)."""


CONDITIONS = {
    "clean": Condition(speed_wpm=(150, 190), pitch=(25, 75), pitch_range_percent=(60, 140),
                       max_word_gap_10ms=2, snr_db=(35.0, 50.0), rt60_s=None),
    "other": Condition(speed_wpm=(135, 205), pitch=(15, 85), pitch_range_percent=(40, 180),
                       max_word_gap_10ms=5, snr_db=(10.0, 25.0), rt60_s=(0.15, 0.5)),
}
SPEED_SPREAD_WPM, PITCH_SPREAD, PITCH_RANGE_SPREAD = 10, 6, 15


@dataclass(frozen=True)
class Part:
    """A share of a split: audio minutes (at hours_scale 1) spoken by this many speakers."""

    condition: str
    minutes: float
    speakers: int


def _preset(train: tuple[float, int], unlabeled_clean: tuple[float, int],
            unlabeled_other: tuple[float, int], each_eval: tuple[float, int]) -> dict[str, tuple[Part, ...]]:
    return {
        "train-clean": (Part("clean", *train),),
        UNLABELED_SPLIT: (Part("clean", *unlabeled_clean), Part("other", *unlabeled_other)),
        "dev-clean": (Part("clean", *each_eval),),
        "dev-other": (Part("other", *each_eval),),
        "test-clean": (Part("clean", *each_eval),),
        "test-other": (Part("other", *each_eval),),
    }


PRESETS = {
    "tiny": _preset(train=(0.8, 4), unlabeled_clean=(0.5, 3), unlabeled_other=(0.5, 3), each_eval=(0.2, 2)),
    "demo": _preset(train=(60, 20), unlabeled_clean=(60, 20), unlabeled_other=(90, 30), each_eval=(7, 8)),
    "gpu": _preset(train=(600, 40), unlabeled_clean=(960, 64), unlabeled_other=(1440, 96), each_eval=(60, 20)),
}


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: a voice (accent + variant) and its own ranges of delivery."""

    id: int
    split: str
    condition: str
    accent: str
    variant: str
    sex: str
    speed_wpm: tuple[int, int]
    pitch: tuple[int, int]
    pitch_range_percent: tuple[int, int]
    word_gap_10ms: tuple[int, int]

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


@dataclass(frozen=True)
class Utterance:
    """Everything needed to render one file, fixed before any audio is made."""

    id: str
    split: str
    speaker: int
    chapter: int
    voice: str
    condition: str
    spoken: str
    transcript: str
    speed_wpm: int
    pitch: int
    pitch_range_percent: int
    word_gap_10ms: int
    seed: int
    """Seed of this utterance's noise, room and level."""

    @property
    def path(self) -> str:
        """Relative to the corpus root, as in LibriSpeech."""
        return f"LibriSpeech/{self.split}/{self.speaker}/{self.chapter}/{self.id}.flac"


@dataclass(frozen=True)
class CorpusPlan:
    """The whole corpus before any audio: who says what, how, and under which ids."""

    speakers: list[Speaker]
    utterances: list[Utterance]
    train_sentences: int
    """Size of the sentence pool of the training splits."""
    eval_sentences: int
    """Size of the (disjoint) sentence pool of dev and test."""


# ---------------------------------------------------------------------------------------------
# Planning: every choice, drawn in one fixed order from the seed


def estimate_seconds(spoken: str, transcript: str, speed_wpm: int, word_gap_10ms: int) -> float:
    """espeak-ng's output length: characters at the speaking rate, word gaps, pauses.

    Fitted on 200 sentences of all accents, variants, rates and pitch ranges: median error 6%,
    90th percentile 16%, no bias, so split totals land within a few per cent.
    """
    pauses = sum(spoken.count(p) for p in ",;:.?!")
    return (-0.35 + 0.0584 * len(transcript) * 175.0 / speed_wpm
            + 0.0096 * len(transcript.split()) * word_gap_10ms + 0.217 * pauses)


def _endless(pool: list[Sentence], rng: np.random.Generator) -> Iterator[Sentence]:
    """The pool in random order, then again in another order: repeats only when exhausted."""
    if not pool:
        raise ValueError("the sentence pool is empty")
    while True:
        for i in rng.permutation(len(pool)):
            yield pool[i]


def _span(rng: np.random.Generator, bounds: tuple[int, int], spread: int) -> tuple[int, int]:
    center = int(rng.integers(bounds[0], bounds[1] + 1))
    return center - spread, center + spread


def _draw(rng: np.random.Generator, span: tuple[int, int]) -> int:
    return int(rng.integers(span[0], span[1] + 1))


def _make_speaker(speaker_id: int, split: str, condition: str, accent: str, variant: str,
                  variant_sex: dict[str, str], rng: np.random.Generator) -> Speaker:
    """A voice with its own ranges of rate, pitch, intonation and word gap."""
    cond = CONDITIONS[condition]
    gap = int(rng.integers(0, cond.max_word_gap_10ms))
    return Speaker(id=speaker_id, split=split, condition=condition, accent=accent, variant=variant,
                   sex=variant_sex[variant], speed_wpm=_span(rng, cond.speed_wpm, SPEED_SPREAD_WPM),
                   pitch=_span(rng, cond.pitch, PITCH_SPREAD),
                   pitch_range_percent=_span(rng, cond.pitch_range_percent, PITCH_RANGE_SPREAD),
                   word_gap_10ms=(gap, gap + 1))


def _fitting_sentence(text: Iterator[Sentence], delivery: dict[str, int],
                      speaker: Speaker) -> tuple[Sentence, float]:
    """The next sentence whose estimated length at this delivery is MIN_SECONDS..MAX_SECONDS."""
    for _ in range(1000):
        sentence = next(text)
        seconds = estimate_seconds(sentence.spoken, sentence.transcript, delivery["speed_wpm"],
                                   delivery["word_gap_10ms"])
        if MIN_SECONDS <= seconds <= MAX_SECONDS:
            return sentence, seconds
    raise ValueError(f"no sentence fits {MIN_SECONDS}-{MAX_SECONDS} s for {speaker.voice} at {delivery}")


def plan_corpus(size: str, hours_scale: float, seed: int, sentences: list[Sentence],
                variant_sex: dict[str, str]) -> CorpusPlan:
    """Speakers, sentences and delivery of every utterance; deterministic for a seed.

    ``variant_sex`` maps each espeak-ng variant to "M" or "F" (its declared gender).
    """
    voice_rng, train_text_rng, eval_text_rng, utt_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    train_pool, eval_pool = split_pools(sentences, EVAL_FRACTION)
    texts = {"train": _endless(train_pool, train_text_rng), "eval": _endless(eval_pool, eval_text_rng)}
    pairs = {
        "clean": [(a, v) for a in CLEAN_ACCENTS for v in FORMANT_VARIANTS],
        "other": [(a, v) for a in HELD_OUT_ACCENTS for v in FORMANT_VARIANTS + KLATT_VARIANTS]
                 + [(a, v) for a in CLEAN_ACCENTS for v in KLATT_VARIANTS],
    }
    pairs = {c: [p[i] for i in voice_rng.permutation(len(p))] for c, p in pairs.items()}
    preset = PRESETS[size]
    needed = {c: sum(p.speakers for parts in preset.values() for p in parts if p.condition == c)
              for c in pairs}
    for condition, n in needed.items():
        if n > len(pairs[condition]):
            raise ValueError(f"preset '{size}' needs {n} {condition} voices, only {len(pairs[condition])} exist")
    n_speakers = sum(needed.values())
    speaker_ids = iter(int(i) for i in voice_rng.choice(np.arange(10, 10000), n_speakers, replace=False))

    speakers: list[Speaker] = []
    drafts: list[tuple[Speaker, Sentence, dict[str, int]]] = []
    for split in SPLITS:
        text = texts["train" if split.startswith("train") else "eval"]
        for part in preset[split]:
            group = [_make_speaker(next(speaker_ids), split, part.condition, *pairs[part.condition].pop(),
                                   variant_sex, voice_rng) for _ in range(part.speakers)]
            target_s, planned_s = part.minutes * 60.0 * hours_scale, 0.0
            for turn in itertools.count():
                speaker = group[turn % len(group)]  # round robin: equal shares
                delivery = {"speed_wpm": _draw(utt_rng, speaker.speed_wpm),
                            "pitch": _draw(utt_rng, speaker.pitch),
                            "pitch_range_percent": _draw(utt_rng, speaker.pitch_range_percent),
                            "word_gap_10ms": _draw(utt_rng, speaker.word_gap_10ms),
                            "seed": int(utt_rng.integers(2**63))}
                sentence, seconds = _fitting_sentence(text, delivery, speaker)
                if turn > 0 and planned_s + seconds / 2 > target_s:
                    break  # the total nearest the target, at least one utterance
                drafts.append((speaker, sentence, delivery))
                planned_s += seconds
            speakers.extend(group)
    speakers, utterances = _number_utterances(speakers, drafts, voice_rng)
    return CorpusPlan(speakers, utterances, train_sentences=len(train_pool), eval_sentences=len(eval_pool))


def _number_utterances(speakers: list[Speaker], drafts: list[tuple[Speaker, Sentence, dict[str, int]]],
                       rng: np.random.Generator) -> tuple[list[Speaker], list[Utterance]]:
    """Give each speaker's utterances chapters (random unique ids) and LibriSpeech ids."""
    by_speaker: dict[int, list[tuple[Sentence, dict[str, int]]]] = defaultdict(list)
    for speaker, sentence, delivery in drafts:
        by_speaker[speaker.id].append((sentence, delivery))
    used = [s for s in speakers if by_speaker[s.id]]  # a tiny hours_scale may leave some out
    n_chapters = sum(math.ceil(len(by_speaker[s.id]) / UTTERANCES_PER_CHAPTER) for s in used)
    chapter_ids = iter(int(i) for i in rng.choice(np.arange(1000, 330000), n_chapters, replace=False))
    utterances = []
    for speaker in used:
        items = by_speaker[speaker.id]
        for start in range(0, len(items), UTTERANCES_PER_CHAPTER):
            chapter = next(chapter_ids)
            for index, (sentence, delivery) in enumerate(items[start:start + UTTERANCES_PER_CHAPTER]):
                utterances.append(Utterance(
                    id=f"{speaker.id}-{chapter}-{index:04d}", split=speaker.split, speaker=speaker.id,
                    chapter=chapter, voice=speaker.voice, condition=speaker.condition,
                    spoken=sentence.spoken, transcript=sentence.transcript, **delivery))
    return used, utterances


# ---------------------------------------------------------------------------------------------
# Rendering one utterance (runs in worker processes)


def _room_impulse_response(rt60_s: float, direct_to_reverb_db: float,
                           rng: np.random.Generator) -> np.ndarray:
    """Direct path plus an exponentially decaying noise tail (-60 dB at rt60_s)."""
    n = int(rt60_s * SAMPLE_RATE)
    tail = rng.standard_normal(n) * np.exp(-math.log(1000.0) * np.arange(n) / n)
    tail[: int(0.002 * SAMPLE_RATE)] = 0.0  # the first reflections arrive after ~2 ms
    tail *= 10.0 ** (-direct_to_reverb_db / 20.0) / np.sqrt(np.sum(tail**2))
    tail[0] = 1.0
    return tail.astype(np.float32)




def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """FFT convolution, cut to the length of x."""
    n_fft = fast_fft_length(len(x) + len(h) - 1)
    return np.fft.irfft(np.fft.rfft(x, n_fft) * np.fft.rfft(h, n_fft), n_fft)[: len(x)]


@functools.cache
def _noise_bank() -> np.ndarray:
    """White, pink and brown unit-power noise (rows), NOISE_BANK_SECONDS each.

    Made once per process from a fixed seed, so every worker holds the same bank; utterances
    mix random slices of it, which is much cheaper than shaping fresh noise each time.
    """
    n = int(NOISE_BANK_SECONDS * SAMPLE_RATE)
    spectrum = np.fft.rfft(np.random.default_rng(0).standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE), 20.0)  # no rumble below 20 Hz
    bank = np.stack([np.fft.irfft(spectrum * freqs ** (-exponent / 2.0), n) for exponent in (0, 1, 2)])
    return (bank / bank.std(axis=1, keepdims=True)).astype(np.float32)


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise of a random color: a random mix of random slices of the bank."""
    bank = _noise_bank()
    index = (int(rng.integers(bank.shape[1])) + np.arange(n)) % bank.shape[1]
    noise = rng.dirichlet(np.ones(len(bank))).astype(np.float32) @ bank[:, index]
    return noise / (np.std(noise) + 1e-12)


def apply_condition(speech: np.ndarray, condition: Condition, rng: np.random.Generator) -> np.ndarray:
    """Room (reverberation), noise at the condition's SNR, and a random peak level."""
    x = speech.astype(np.float32)
    if condition.rt60_s is not None:
        rir = _room_impulse_response(rng.uniform(*condition.rt60_s), rng.uniform(3.0, 12.0), rng)
        x = _convolve(x, rir)
    snr_db = rng.uniform(*condition.snr_db)
    x = x + _noise(len(x), rng) * np.sqrt(np.mean(x**2) / 10.0 ** (snr_db / 10.0))
    peak = 10.0 ** (rng.uniform(*PEAK_DBFS) / 20.0)
    return x * (peak / max(float(np.max(np.abs(x))), 1e-9))


def _run(cmd: list[str], stdin: bytes, what: str) -> bytes:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    err = proc.stderr.decode(errors="replace").strip()
    # espeak-ng reports an unknown voice on stderr and still exits 0, with no audio.
    if proc.returncode != 0 or not proc.stdout or "Error" in err:
        raise RuntimeError(f"{what}: '{' '.join(cmd)}' failed (exit {proc.returncode}): {err[:300]}")
    return proc.stdout


@dataclass(frozen=True)
class Renderer:
    """Makes one utterance's FLAC file: a picklable callable for the worker pool."""

    root: Path
    espeak: str
    sox: str

    def __call__(self, utt: Utterance) -> tuple[str, float]:
        ssml = (f'<speak><prosody range="{utt.pitch_range_percent}%">{escape(utt.spoken)}'
                "</prosody></speak>")
        wav = _run([self.espeak, "--stdin", "-m", "-v", utt.voice, "-s", str(utt.speed_wpm),
                    "-p", str(utt.pitch), "-g", str(utt.word_gap_10ms), "--stdout"],
                   ssml.encode(), f"espeak-ng on {utt.id}")
        raw = _run([self.sox, "-V1", "-t", "wav", "-", "-t", "raw", "-e", "floating-point", "-b", "32",
                    "--endian", "little", "-", "rate", "-v", str(SAMPLE_RATE)],
                   wav, f"sox resampling {utt.id}")
        audio = apply_condition(np.frombuffer(raw, dtype="<f4"), CONDITIONS[utt.condition],
                                np.random.default_rng(utt.seed))
        pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
        with atomic_path(self.root / utt.path) as tmp:
            sf.write(tmp, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        return utt.id, len(pcm) / SAMPLE_RATE


# ---------------------------------------------------------------------------------------------
# Tools and voices


def _require(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(
            f"'{name}' not found on PATH: the synthetic corpus needs it; install the Debian "
            f"package {package} (apt-get install {package})"
        )
    return path


def installed_variants(espeak: str) -> dict[str, str]:
    """espeak-ng voice variants installed: file name -> sex ("M"/"F")."""
    out = subprocess.run([espeak, "--voices=variant"], stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, check=True).stdout
    return {m.group(2): m.group(1) for m in re.finditer(r"/([MF])\s+\S+\s+!v/(\S+)", out)}


def _check_voices(espeak: str) -> dict[str, str]:
    variants = installed_variants(espeak)
    missing = [v for v in FORMANT_VARIANTS + KLATT_VARIANTS if v not in variants]
    listing = subprocess.run([espeak, "--voices=en"], stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, check=True).stdout
    languages = {line.split()[1] for line in listing.splitlines()[1:] if line.split()}
    missing += [a for a in CLEAN_ACCENTS + HELD_OUT_ACCENTS if a not in languages]
    if missing:
        raise FileNotFoundError(f"espeak-ng lacks the voices {', '.join(missing)}; "
                                "install the Debian packages espeak-ng and espeak-ng-data")
    return variants


# ---------------------------------------------------------------------------------------------
# Writing the corpus


def _kaldi_text(utterances: list[Utterance]) -> str:
    return "".join(f"{u.id} {u.transcript}\n" for u in sorted(utterances, key=lambda u: u.id))


def _speakers_txt(speakers: list[Speaker], seconds: dict[int, float]) -> str:
    lines = [
        "; Synthetic speakers (espeak-ng voices), in the format of LibriSpeech's SPEAKERS.TXT.",
        "; NAME is the espeak-ng voice: accent+variant.",
        ";ID  |SEX| SUBSET           |MINUTES| NAME",
    ]
    for s in sorted(speakers, key=lambda s: s.id):
        lines.append(f"{s.id:<5}| {s.sex} | {s.split:<17}| {seconds[s.id] / 60:5.2f} | {s.voice}")
    return "\n".join(lines) + "\n"


def _manifest(args: dict, plan: CorpusPlan, espeak_version: str, seconds: dict[str, float] | None) -> str:
    """synth.json: arguments, tools, text pools, splits (measured hours once known), voices."""
    splits = {}
    for split in SPLITS:
        utts = [u for u in plan.utterances if u.split == split]
        splits[split] = {
            "utterances": len(utts),
            "speakers": len({u.speaker for u in utts}),
            "hours": None if seconds is None else round(sum(seconds[u.id] for u in utts) / 3600, 4),
        }
    head = {
        "generator": "asr synth",
        **args,
        "sample_rate": SAMPLE_RATE,
        "espeak_ng": espeak_version,
        "text": {"sources": ["bible-kjv", "fortunes-min"], "train_sentences": plan.train_sentences,
                 "eval_sentences": plan.eval_sentences},
        "splits": splits,
    }
    # One speaker a line: the file stays readable with hundreds of them.
    speakers = ",\n".join(f"  {json.dumps(asdict(s) | {'voice': s.voice})}" for s in plan.speakers)
    return json.dumps(head, indent=1).removesuffix("\n}") + f',\n "speakers": [\n{speakers}\n ]\n}}\n'


def _prepare_root(root: Path, args: dict, overwrite: bool) -> bool:
    """True when a finished corpus with these arguments is already there.

    Then there is nothing to do even with ``overwrite``: the same arguments give the same bytes.
    """
    marker = root / MARKER
    if marker.is_file():
        made_with = json.loads(marker.read_text())
        if made_with == args:
            return True
        if not overwrite:
            raise ValueError(f"{root} holds a finished corpus made with {made_with}, not {args}; "
                             "pass --overwrite to replace it")
    ours = [root / "LibriSpeech", root / "held-out", root / "synth.json", marker]
    existing = [p for p in ours if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{root} already holds {', '.join(p.name for p in existing)} (an unfinished "
                         "corpus?); pass --overwrite to replace it")
    if existing and not (root / "synth.json").is_file():
        raise ValueError(f"{root} holds {', '.join(p.name for p in existing)} not made by 'asr synth' "
                         "(no synth.json); not removing it")
    marker.unlink(missing_ok=True)  # first: a half-removed corpus must not look finished
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return False


def _progress(done: int, total: int, audio_s: float, elapsed_s: float) -> str:
    rate = audio_s / max(elapsed_s, 1e-9)
    eta_s = elapsed_s * (total - done) / max(done, 1)
    return (f"synth: {done}/{total} utterances ({100 * done / total:.0f}%), {audio_s / 3600:.2f} h audio, "
            f"{rate:.0f}x real time, elapsed {elapsed_s:.0f} s, ETA {eta_s:.0f} s")


def _render_all(plan: CorpusPlan, render: Renderer, jobs: int) -> dict[str, float]:
    """Render every utterance on ``jobs`` processes; seconds of audio by utterance id.

    Chunks are collected in completion order, so the progress lines follow the work done.
    """
    total = len(plan.utterances)
    print(f"synth: rendering {total} utterances on {jobs} process{'es' if jobs > 1 else ''}",
          file=sys.stderr, flush=True)
    chunks = [plan.utterances[i:i + RENDER_CHUNK] for i in range(0, total, RENDER_CHUNK)]
    done = parallel_map(functools.partial(_render_chunk, render), chunks, jobs=jobs,
                        progress=_RenderProgress(total), ordered=False)
    return {utt_id: seconds for chunk in done for utt_id, seconds in chunk.items()}


class _RenderProgress:
    """A line every PROGRESS_EVERY_S seconds and at the end: utterances, hours of audio,
    speed as a multiple of real time, and the time left."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.audio_s = total, 0, 0.0
        self._start = self._last = time.monotonic()

    def update(self, done: int, result: dict[str, float]) -> None:
        self.done += len(result)
        self.audio_s += sum(result.values())
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S or self.done == self.total:
            print(_progress(self.done, self.total, self.audio_s, now - self._start),
                  file=sys.stderr, flush=True)
            self._last = now

    def close(self) -> None:
        pass  # the last update printed the final line


def _render_chunk(render: Renderer, chunk: list[Utterance]) -> dict[str, float]:
    return dict(render(utt) for utt in chunk)


def _write_transcripts(root: Path, plan: CorpusPlan, seconds: dict[str, float]) -> None:
    """trans.txt of each labeled chapter, the unlabeled split's held-out text, SPEAKERS.TXT."""
    by_chapter: dict[Path, list[Utterance]] = defaultdict(list)
    for utt in plan.utterances:
        if utt.split != UNLABELED_SPLIT:
            by_chapter[(root / utt.path).parent].append(utt)
    for folder, utts in by_chapter.items():
        write_atomic(folder / f"{utts[0].speaker}-{utts[0].chapter}.trans.txt", _kaldi_text(utts))
    unlabeled = [u for u in plan.utterances if u.split == UNLABELED_SPLIT]
    (root / "held-out").mkdir(parents=True, exist_ok=True)
    write_atomic(root / "held-out" / f"{UNLABELED_SPLIT}.txt", _kaldi_text(unlabeled))
    speaker_seconds: dict[int, float] = defaultdict(float)
    for utt in plan.utterances:
        speaker_seconds[utt.speaker] += seconds[utt.id]
    write_atomic(root / "LibriSpeech" / "SPEAKERS.TXT", _speakers_txt(plan.speakers, speaker_seconds))


def synthesize_corpus(out: str | Path, size: str = "tiny", hours_scale: float = 1.0, seed: int = 0,
                      jobs: int = 0, overwrite: bool = False) -> Path:
    """Write the synthetic corpus under ``out``; returns ``out/LibriSpeech``.

    ``jobs`` worker processes (0: every core) render utterances in parallel; progress goes to
    stderr. Refuses to touch an existing corpus unless ``overwrite``; a finished corpus made
    with the same arguments is left as it is (it holds the very bytes a new run would write).
    """
    if size not in PRESETS:
        raise ValueError(f"unknown --size {size!r}; allowed: {', '.join(PRESETS)}")
    if not (math.isfinite(hours_scale) and hours_scale > 0):
        raise ValueError(f"--hours-scale must be a positive number, got {hours_scale}")
    jobs = resolve_jobs(jobs)
    start = time.monotonic()
    root = Path(out)
    args = {"size": size, "hours_scale": hours_scale, "seed": seed}
    if _prepare_root(root, args, overwrite):
        print(f"synth: {root} already holds the finished corpus ({size}, hours_scale={hours_scale}, "
              f"seed={seed}); nothing to do")
        return root / "LibriSpeech"

    espeak, sox = _require("espeak-ng", "espeak-ng"), _require("sox", "sox")
    variant_sex = _check_voices(espeak)
    version = subprocess.run([espeak, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, check=True).stdout
    espeak_version = m.group(1) if (m := re.search(r"text-to-speech: (\S+)", version)) else "unknown"
    plan = plan_corpus(size, hours_scale, seed, load_sentences(), variant_sex)

    for folder in sorted({(root / u.path).parent for u in plan.utterances}):
        folder.mkdir(parents=True, exist_ok=True)
    write_atomic(root / "synth.json", _manifest(args, plan, espeak_version, None))
    seconds = _render_all(plan, Renderer(root=root, espeak=espeak, sox=sox), jobs)
    _write_transcripts(root, plan, seconds)
    manifest = _manifest(args, plan, espeak_version, seconds)
    write_atomic(root / "synth.json", manifest)
    write_atomic(root / MARKER, json.dumps(args) + "\n")

    for split, info in json.loads(manifest)["splits"].items():
        print(f"synth: {split:<16} {info['utterances']:6d} utterances {info['speakers']:4d} speakers "
              f"{info['hours']:8.3f} h")
    print(f"synth: wrote {root / 'LibriSpeech'}: {sum(seconds.values()) / 3600:.3f} h of audio "
          f"in {time.monotonic() - start:.0f} s")
    return root / "LibriSpeech"
