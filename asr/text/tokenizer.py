"""Tokenizers: normalized LibriSpeech text <-> CTC label ids, with the blank at id 0.

Two kinds share one interface (:class:`Tokenizer`):

- ``letters`` (the paper's default): blank, the word boundary ``|``, the apostrophe and A-Z.
  No training, nothing to go stale, and every LibriSpeech transcript is covered.
- ``sentencepiece`` (unigram or BPE) trained on the labeled train text. The model bytes travel
  inside :meth:`Tokenizer.to_dict`, so a checkpoint alone can decode.

``to_dict`` holds plain ``str``/``int``/``list``/``dict`` values only, so a checkpoint that
embeds it stays loadable with ``torch.load(weights_only=True)``. ``identity`` carries a
content hash: a checkpoint trained with one tokenizer refuses to be decoded with another.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from asr.fileio import write_atomic

BLANK_ID = 0
TOKENIZER_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "sentencepiece.model"  # a copy for standard tools (spm_encode); not read back

WORD_BOUNDARY = "|"
LETTERS = ("'", *(chr(c) for c in range(ord("A"), ord("Z") + 1)))
_BLANK_PIECE = "<blank>"
_UNK_PIECE = "<unk>"


@runtime_checkable
class Tokenizer(Protocol):
    """What training, decoding and pseudo-labeling need from a tokenizer."""

    blank_id: int
    """The CTC blank; always 0."""
    vocab_size: int
    """Number of output classes of the CTC head, blank included."""
    tokens: list[str]
    """Token string of every id (``tokens[0]`` is the blank): the beam decoder's alphabet."""
    word_boundary: str | None
    """Token that separates words (``|`` for letters); None when pieces mark word starts."""

    def encode(self, text: str) -> list[int]:
        """Ids of normalized text (see :func:`asr.text.normalize.normalize_librispeech`)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Normalized words of CTC-collapsed ids; blanks are ignored."""
        ...

    def identity(self) -> dict:
        """Kind, vocabulary size and a content hash: what a checkpoint must match."""
        ...

    def to_dict(self) -> dict:
        """Everything needed to rebuild it, as plain str/int/list/dict values."""
        ...


def _content_hash(d: dict) -> str:
    blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Letters


class LetterTokenizer:
    """Blank, ``|`` between words, apostrophe, A-Z: 29 classes.

    Text must already be normalized. A character outside the alphabet is an error naming the
    character, unless ``replacements`` maps it explicitly to alphabet text (e.g.
    ``{"\\u00c9": "E"}``); nothing is dropped silently, because a silently shortened transcript
    trains the model to delete words.
    """

    kind = "letters"

    def __init__(self, replacements: Mapping[str, str] | None = None) -> None:
        self.tokens = [_BLANK_PIECE, WORD_BOUNDARY, *LETTERS]
        self.blank_id = BLANK_ID
        self.vocab_size = len(self.tokens)
        self.word_boundary: str | None = WORD_BOUNDARY
        self._ids = {tok: i for i, tok in enumerate(self.tokens)}
        self._ids[" "] = self._ids[WORD_BOUNDARY]
        self.replacements = dict(replacements or {})
        for char, text in self.replacements.items():
            if len(char) != 1:
                raise ValueError(f"letters replacements: key {char!r} must be a single character")
            bad = [c for c in text if c not in self._ids]
            if bad:
                raise ValueError(f"letters replacements: {char!r} -> {text!r} uses {bad[0]!r}, "
                                 f"which is not in the alphabet {''.join(LETTERS)}")

    def encode(self, text: str) -> list[int]:
        text = " ".join(text.split())
        ids = []
        for pos, char in enumerate(text):
            if char in self._ids:
                ids.append(self._ids[char])
            elif char in self.replacements:
                ids.extend(self._ids[c] for c in self.replacements[char])
            else:
                raise ValueError(
                    f"letters tokenizer: character {char!r} (U+{ord(char):04X}) at position {pos} "
                    f"of {text!r} is not in the alphabet (A-Z, apostrophe, space); normalize the "
                    "text first or map it with LetterTokenizer(replacements={...})")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        chars = "".join(self.tokens[i] for i in ids if i != self.blank_id)
        return " ".join(chars.replace(WORD_BOUNDARY, " ").split())

    def identity(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "hash": _content_hash(self.to_dict())}

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokens": list(self.tokens), "replacements": dict(self.replacements)}

    @classmethod
    def from_dict(cls, d: dict) -> LetterTokenizer:
        tok = cls(d.get("replacements"))
        if d.get("tokens") != tok.tokens:
            raise ValueError(f"letters tokenizer: stored alphabet {d.get('tokens')} differs from "
                             f"this code's {tok.tokens}")
        return tok


# ---------------------------------------------------------------------------------------------
# Sentencepiece


class SentencePieceTokenizer:
    """A sentencepiece unigram/BPE model whose id 0 is the CTC blank.

    Trained with ``pad_id=0`` named ``<blank>`` and ``unk_id=1``, and no BOS/EOS: the
    sentencepiece id *is* the CTC class, the blank never comes out of ``encode``, and
    ``vocab_size`` counts the blank. A character the model has never seen is an error at
    ``encode`` (it would otherwise become ``<unk>`` and teach the model to emit it).
    """

    kind = "sentencepiece"

    def __init__(self, model_bytes: bytes) -> None:
        import sentencepiece as spm

        self._model_bytes = bytes(model_bytes)
        self._sp = spm.SentencePieceProcessor(model_proto=self._model_bytes)
        if self._sp.pad_id() != BLANK_ID or self._sp.id_to_piece(BLANK_ID) != _BLANK_PIECE:
            raise ValueError(f"sentencepiece model: id {BLANK_ID} must be the {_BLANK_PIECE} "
                             f"piece (train it with build_tokenizer / train_sentencepiece)")
        self.blank_id = BLANK_ID
        self.unk_id = self._sp.unk_id()
        self.vocab_size = self._sp.get_piece_size()
        self.tokens = [self._sp.id_to_piece(i) for i in range(self.vocab_size)]
        self.word_boundary: str | None = None

    @property
    def model_bytes(self) -> bytes:
        return self._model_bytes

    def encode(self, text: str) -> list[int]:
        ids = self._sp.encode(text)
        if self.unk_id in ids:
            unknown = sorted({c for c in text if not c.isspace() and self.unk_id in self._sp.encode(c)})
            raise ValueError(f"sentencepiece tokenizer: {text!r} has characters never seen in "
                             f"training: {', '.join(repr(c) for c in unknown)}")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self._sp.decode([int(i) for i in ids if i != self.blank_id]).split())

    def identity(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "hash": _content_hash(self.to_dict())}

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model": base64.b64encode(self._model_bytes).decode("ascii")}

    @classmethod
    def from_dict(cls, d: dict) -> SentencePieceTokenizer:
        if not isinstance(d.get("model"), str):
            raise ValueError("sentencepiece tokenizer dict: expected the base64 model under 'model'")
        return cls(base64.b64decode(d["model"]))


def train_sentencepiece(texts: Iterable[str], vocab_size: int = 128,
                        model_type: str = "unigram") -> SentencePieceTokenizer:
    """Train on normalized transcripts; the same texts in the same order give the same bytes.

    Determinism: one thread, every sentence used (no sampling), no shuffling, a fixed seed,
    and the identity normalization rule (the text is already normalized). ``vocab_size``
    counts the blank and ``<unk>``; it is a hard limit, and a text too small to fill it is an
    error rather than a silently smaller vocabulary.
    """
    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"sentencepiece model_type: got {model_type!r}, allowed values are unigram, bpe")
    sentences = [" ".join(t.split()) for t in texts]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise ValueError("sentencepiece training: no non-empty text to train on")
    spm.set_random_generator_seed(0)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0, normalization_rule_name="identity",
            pad_id=BLANK_ID, pad_piece=_BLANK_PIECE, unk_id=1, unk_piece=_UNK_PIECE,
            bos_id=-1, eos_id=-1, num_threads=1, input_sentence_size=0,
            shuffle_input_sentence=False, max_sentence_length=1 << 16, minloglevel=2,
        )
    except RuntimeError as err:
        raise ValueError(f"sentencepiece training ({model_type}, vocab_size={vocab_size}, "
                         f"{len(sentences)} sentences) failed: {err}") from None
    return SentencePieceTokenizer(model.getvalue())


# ---------------------------------------------------------------------------------------------
# Reading training text, saving and loading


def read_texts(source: str | Path) -> list[str]:
    """Transcripts of a text source, in its order, for :func:`build_tokenizer`.

    A source is a shard split folder (its ``index.npz``), a manifest (``.jsonl`` lines with a
    ``text`` field) or Kaldi text (any other file: ``<utterance id> <TRANSCRIPT>`` a line).
    Errors name the file and line.
    """
    source = Path(source)
    if source.is_dir():
        from asr.data.shards import load_index

        return load_index(source).texts
    if not source.is_file():
        raise FileNotFoundError(f"tokenizer text source not found: {source} (expected a manifest "
                                ".jsonl, Kaldi text or a shard split folder holding index.npz)")
    texts = []
    with source.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            if source.suffix != ".jsonl":  # Kaldi text: the id, then the transcript
                texts.append(line.strip().partition(" ")[2].strip())
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{source}:{line_no}: not a JSON line ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{source}:{line_no}: expected an object with a string 'text' field")
            texts.append(record["text"])
    return texts


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict` output (e.g. from a checkpoint)."""
    kinds = {"letters": LetterTokenizer, "sentencepiece": SentencePieceTokenizer}
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind not in kinds:
        raise ValueError(f"tokenizer dict: 'kind' is {kind!r}, allowed values are {', '.join(kinds)}")
    return kinds[kind].from_dict(d)


def save_tokenizer(tok: Tokenizer, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/tokenizer.json`` atomically (plus the raw sentencepiece model)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(tok, SentencePieceTokenizer):
        write_atomic(out_dir / SENTENCEPIECE_FILE, tok.model_bytes)
    path = out_dir / TOKENIZER_FILE
    write_atomic(path, (json.dumps(tok.to_dict(), indent=1, sort_keys=True) + "\n").encode())
    return path


def load_tokenizer(out_dir: str | Path) -> Tokenizer:
    """Read a folder written by :func:`save_tokenizer` (``asr tokenizer --out DIR``)."""
    path = Path(out_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer in {out_dir}: expected {path} (written by `asr tokenizer`)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg})") from None
    try:
        return tokenizer_from_dict(d)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def build_tokenizer(kind: str, out_dir: str | Path, *, texts: Iterable[str] | None = None,
                    vocab_size: int = 128, model_type: str = "unigram") -> Tokenizer:
    """Build (letters) or train (sentencepiece) a tokenizer on ``texts`` and save it in ``out_dir``.

    ``texts`` are normalized transcripts (see :func:`read_texts` for files and shard folders).
    For letters, given texts are checked for characters outside the alphabet, so a bad
    transcript fails here rather than mid-training; sentencepiece needs them to train.
    """
    if kind == "letters":
        tok: Tokenizer = LetterTokenizer()
        for number, text in enumerate(texts or (), 1):
            try:
                tok.encode(text)
            except ValueError as err:
                raise ValueError(f"tokenizer training text, utterance {number}: {err}") from None
    elif kind == "sentencepiece":
        if texts is None:
            raise ValueError("sentencepiece tokenizer: training texts are needed "
                             "(--text-from a manifest .jsonl, Kaldi text or a shard split folder)")
        tok = train_sentencepiece(texts, vocab_size=vocab_size, model_type=model_type)
    else:
        raise ValueError(f"tokenizer kind: got {kind!r}, allowed values are letters, sentencepiece")
    save_tokenizer(tok, out_dir)
    return tok
