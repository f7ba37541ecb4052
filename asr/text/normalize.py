"""Text normalization shared by the corpus, the tokenizers and scoring.

LibriSpeech transcripts are upper case words separated by single spaces, with apostrophes
kept inside words ("DON'T", "JAMES'S") and no other punctuation. References and hypotheses
must be normalized identically before scoring, so every part of the project calls this one
function.
"""

from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_SEPARATORS = re.compile(r"[-\u2010-\u2015/_]+")  # hyphens, dashes, slashes: word breaks
_DROP = re.compile(r"[^\w\s']")  # punctuation and symbols (keeps letters/digits of any script)
_EDGE_APOSTROPHES = re.compile(r"(?<!\w)'+|'+(?!\w)")  # quote marks, not contractions


def normalize_librispeech(text: str) -> str:
    """Upper case, apostrophes kept inside words, other punctuation removed, spaces collapsed.

    >>> normalize_librispeech("  'Don't' -- he said, \u201cMr. Smith's dog!\u201d ")
    "DON'T HE SAID MR SMITH'S DOG"
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    text = _SEPARATORS.sub(" ", text)
    text = _DROP.sub("", text.replace("_", " "))
    text = _EDGE_APOSTROPHES.sub("", text)
    return " ".join(text.upper().split())


def normalize_none(text: str) -> str:
    """Whitespace collapsed only: for scoring text that is already normalized."""
    return " ".join(text.split())


NORMALIZERS = {"librispeech": normalize_librispeech, "none": normalize_none}


def get_normalizer(name: str):
    """The normalizer called ``name`` (``librispeech`` or ``none``)."""
    try:
        return NORMALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown text normalization {name!r}; allowed: {', '.join(NORMALIZERS)}") from None
