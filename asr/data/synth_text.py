"""Sentences for the synthetic corpus: public-domain English text installed offline.

Two Debian sources, read the same way on every machine so that a seed fixes the corpus:

- the King James Bible (``bible-kjv`` + ``bible-kjv-text``, the ``bible`` command): about 31k
  verses and a vocabulary of about 12k words;
- the fortunes of ``fortunes-min`` (``/usr/share/games/fortunes``): modern sentences and words.

Each passage is cut into clauses at ``. ? ! ; :``; neighbouring clauses are joined into
segments of :data:`MIN_WORDS` to :data:`MAX_WORDS` words (about 2 to 15 s of speech). A segment
is kept only when the synthesizer will say exactly what the transcript says: no digits,
abbreviations, initials or acronyms (espeak-ng expands them differently from the text), no
symbols it would read aloud, no vowel-less words it would spell. All-caps words that are real
words (KJV's "LORD") are written in normal case for synthesis, because espeak-ng may spell
them letter by letter; the transcript is upper case anyway.

The transcript is :func:`asr.text.normalize.normalize_librispeech` of the spoken text, the
normalization every other part of the project uses.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from asr.text.normalize import normalize_librispeech

MIN_WORDS = 5
"""Shortest segment kept, in words (under 2 s at espeak-ng's default 175 words a minute)."""
MAX_WORDS = 32
"""Longest segment kept, in words (about 11 s at 175 words a minute)."""

KJV_RANGE = "Gen1:1-Rev22:21"
FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_FILES = ("fortunes", "literature", "riddles")
"""The files of Debian's fortunes-min; a fixed list, so a larger fortunes install changes nothing."""

_VERSE = re.compile(r"^\s+\d+ (.+)$")
_CLAUSE_END = re.compile(r"(?<=[.?!;:])\s+")
_ALLOWED = re.compile(r"^[A-Za-z ,.;:?!'\"()\-]+$")
_ABBREVIATIONS = frozenset({
    "Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Mt", "Ft", "vs", "etc", "Prof", "Rev", "Gen", "Col",
    "Capt", "Lt", "Sgt", "No", "Co", "Inc", "Ltd", "Ave", "Wm", "viz", "cf", "ca", "Esq", "Hon",
    "Gov", "Sen", "Rep", "Pres",
})
_BEFORE_FULL_STOP = re.compile(r"(?<![A-Za-z])([A-Za-z]{1,4})\.")
_INNER_FULL_STOP = re.compile(r"\.[A-Za-z]")  # "e.g.", "U.S.A."
_DASHES = re.compile(r"\s*--+\s*|\s+-\s+")  # a spoken pause, not a word joiner
_QUOTES = re.compile(r"\"|(?<![A-Za-z])'+|'+(?![A-Za-z])")  # quote marks, not apostrophes
_WORD = re.compile(r"[A-Za-z']+")
_SPELLED = re.compile(  # what espeak-ng spells: vowel-less words ("hmm", "Mrs"), lone letters
    r"(?<![A-Za-z'])(?:[b-df-hj-np-tv-xzB-DF-HJ-NP-TV-XZ']+|[EUYeuy])(?![A-Za-z'])"
)
_ALL_CAPS = re.compile(r"(?<![A-Za-z'])[A-Z][A-Z']+(?![A-Za-z'])")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Sentence:
    """One segment: what the synthesizer is asked to say, and its LibriSpeech transcript."""

    spoken: str
    transcript: str
    source: str


def _require_command(name: str, package: str, what: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(
            f"'{name}' not found on PATH: {what} needs it; install the Debian package "
            f"{package} (apt-get install {package})"
        )
    return path


def read_kjv_verses() -> list[str]:
    """The 31,102 verses of the King James Bible, in canonical order."""
    bible = _require_command("bible", "bible-kjv", "the KJV sentence source")
    # -l sets the line width: wide enough that every verse is on one line.
    proc = subprocess.run([bible, "-l100000", KJV_RANGE], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, check=False)
    verses = [m.group(1) for line in proc.stdout.splitlines() if (m := _VERSE.match(line))]
    if proc.returncode != 0 or len(verses) < 31000:
        raise FileNotFoundError(
            f"'bible {KJV_RANGE}' gave {len(verses)} verses (exit {proc.returncode}: "
            f"{proc.stderr.strip()[:200]}); install the Debian package bible-kjv-text"
        )
    return verses


def read_fortune_paragraphs(directory: Path = FORTUNES_DIR) -> list[str]:
    """Paragraphs of the fortunes-min files, attribution lines and Q:/A: tags removed."""
    paragraphs = []
    for name in FORTUNE_FILES:
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: the fortunes sentence source needs it; install the Debian "
                "package fortunes-min (apt-get install fortunes-min)"
            )
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [re.sub(r"^\s*[QA]:\s*", "", line) for line in entry.splitlines()
                     if not line.strip().startswith("--")]
            paragraphs.extend(p for p in "\n".join(lines).split("\n\n") if p.strip())
    return paragraphs


def known_words(passages: Iterable[str]) -> set[str]:
    """Lower-case words that occur written in lower or title case somewhere in the text.

    An all-caps word in this set is a real word set in capitals for emphasis ("LORD"); any
    other all-caps word is taken for an acronym.
    """
    tokens: set[str] = set()
    for text in passages:
        tokens.update(_WORD.findall(text))
    return {w.lower() for w in tokens if not w.isupper()}


def _spoken_form(text: str, vocabulary: set[str]) -> str | None:
    """The text as espeak-ng should read it, or None when the transcript would not match."""
    if not _ALLOWED.match(text):
        return None  # digits, symbols read aloud (&, %, $), non-ASCII letters, overstrikes
    if "-" in text:
        text = _DASHES.sub(", ", text).replace("-", " ")
    if "'" in text or '"' in text:
        text = _QUOTES.sub("", text)
    if "(" in text or ")" in text:
        text = text.replace("(", " ").replace(")", " ")  # "LITE(tm)" is two words
    text = _SPACES.sub(" ", text).strip(" ,;:")
    if _SPELLED.search(text):
        return None
    capitals = _ALL_CAPS.findall(text)
    if any(word.lower() not in vocabulary for word in capitals):
        return None  # an acronym
    return _ALL_CAPS.sub(lambda m: m.group(0).capitalize(), text) if capitals else text


def _has_abbreviation(passage: str) -> bool:
    """Initials ("J. R. R."), titles ("Mr."), or dotted forms ("e.g.")."""
    return bool(_INNER_FULL_STOP.search(passage)) or any(
        word in _ABBREVIATIONS or (len(word) == 1 and word not in "AIO")
        for word in _BEFORE_FULL_STOP.findall(passage)
    )


def _join_clauses(clauses: list[str]) -> Iterator[str]:
    """Neighbouring clauses joined greedily into segments of at most MAX_WORDS words."""
    segment: list[str] = []
    words = 0
    for clause in clauses:
        n = len(clause.split())
        if segment and words + n > MAX_WORDS:
            yield " ".join(segment)
            segment, words = [], 0
        segment.append(clause)
        words += n
    if segment:
        yield " ".join(segment)


def segment_passage(passage: str, vocabulary: set[str], source: str) -> Iterator[Sentence]:
    """Cut one passage into sentences of MIN_WORDS..MAX_WORDS words the synthesizer reads verbatim."""
    passage = _SPACES.sub(" ", passage).strip()
    if _has_abbreviation(passage):
        return  # a full stop after an abbreviation would cut the passage in the wrong place
    for text in _join_clauses(_CLAUSE_END.split(passage)):
        spoken = _spoken_form(text, vocabulary)
        if spoken is None:
            continue
        transcript = normalize_librispeech(spoken)
        if MIN_WORDS <= len(transcript.split()) <= MAX_WORDS:
            yield Sentence(spoken=spoken, transcript=transcript, source=source)


def load_sentences() -> list[Sentence]:
    """All usable sentences, unique by transcript, in source order (KJV, then fortunes)."""
    sources = [("kjv", read_kjv_verses()), ("fortunes", read_fortune_paragraphs())]
    vocabulary = known_words(p for _, passages in sources for p in passages)
    seen: set[str] = set()
    sentences = []
    for source, passages in sources:
        for passage in passages:
            for sentence in segment_passage(passage, vocabulary, source):
                if sentence.transcript not in seen:
                    seen.add(sentence.transcript)
                    sentences.append(sentence)
    return sentences


def is_evaluation_sentence(transcript: str, eval_fraction: float) -> bool:
    """Whether a sentence belongs to the dev/test pool.

    Decided by a hash of the transcript, not by the seed: dev/test text is disjoint from
    training text in every corpus, and the same across seeds.
    """
    digest = hashlib.blake2b(transcript.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < eval_fraction


def split_pools(sentences: list[Sentence], eval_fraction: float) -> tuple[list[Sentence], list[Sentence]]:
    """(training pool, evaluation pool): disjoint by transcript."""
    train, evaluation = [], []
    for s in sentences:
        (evaluation if is_evaluation_sentence(s.transcript, eval_fraction) else train).append(s)
    return train, evaluation
