"""CTC decoding: greedy (on the device) and beam search (flashlight-text, on the CPU).

``greedy_decode`` returns CTC-collapsed token ids (``tokenizer.decode`` makes words of them);
``BeamDecoder`` returns words, because with a lexicon the words are the search's own output.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from asr.text.tokenizer import Tokenizer


def ctc_keep_frames(frame_ids: Tensor, lengths: Tensor, blank_id: int = 0) -> Tensor:
    """Bool [B, T]: frames whose label survives the CTC collapse.

    A frame is kept when it is inside its utterance, is not blank, and differs from the
    frame before it (merge repeats first, then drop blanks: ``A A _ A`` -> ``A A``).
    """
    valid = torch.arange(frame_ids.size(1), device=frame_ids.device) < lengths[:, None]
    changed = torch.ones_like(valid)
    changed[:, 1:] = frame_ids[:, 1:] != frame_ids[:, :-1]
    return valid & changed & (frame_ids != blank_id)


def greedy_decode(log_probs: Tensor, lengths: Tensor, blank_id: int = 0) -> list[list[int]]:
    """Best path per utterance: argmax per frame, merge repeats, drop blanks.

    The argmax and the collapse run where ``log_probs`` live; the whole batch comes to the
    host in one copy (lengths and tokens packed together).
    """
    frame_ids = log_probs.argmax(dim=-1)
    keep = ctc_keep_frames(frame_ids, lengths, blank_id)
    packed = torch.cat([keep.sum(dim=1), frame_ids[keep]]).tolist()
    batch = frame_ids.size(0)
    counts, tokens = packed[:batch], packed[batch:]
    out, start = [], 0
    for n in counts:
        out.append(tokens[start:start + n])
        start += n
    return out


# ---------------------------------------------------------------------------------------------
# Beam search


@dataclass(frozen=True)
class BeamOptions:
    """Search settings of :class:`BeamDecoder`, under flashlight's names."""

    beam_size: int = 50  # hypotheses kept after each frame
    beam_threshold: float = 50.0  # prune hypotheses this far (log-prob) below the best
    lm_weight: float = 2.0  # language-model weight (with an LM)
    word_score: float = 0.0  # score added per emitted word
    sil_score: float = 0.0  # score added per word-boundary token


def _require_flashlight():
    """torchaudio's ``ctc_decoder``, or an error that says what to install."""
    try:
        import flashlight.lib.text.decoder  # noqa: F401  (torchaudio hides this behind RuntimeError)
    except ImportError as err:
        raise ImportError("beam search decoding needs flashlight-text: pip install flashlight-text "
                          f"(or pip install -e '.[beam]'); import failed with: {err}") from None
    from torchaudio.models.decoder import ctc_decoder

    return ctc_decoder


def spell(tokenizer: Tokenizer, word: str) -> list[str]:
    """Token strings of one word as the lexicon spells it.

    No trailing ``|`` for letters: the decoder inserts the word boundary (its silence token)
    between words itself, and a spelling that ended with it could not end an utterance, since
    transcripts (and so the model) put no ``|`` after the last word.
    """
    return [tokenizer.tokens[i] for i in tokenizer.encode(word)]


def read_lexicon(path: str | Path, tokenizer: Tokenizer) -> list[tuple[str, list[str]]]:
    """Read a lexicon: ``WORD`` (spelled with the tokenizer) or ``WORD tok tok ...`` per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lexicon not found: {path}")
    known = set(tokenizer.tokens)
    entries = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        word, spelling = fields[0], fields[1:]
        if not spelling:
            try:
                spelling = spell(tokenizer, word)
            except ValueError as err:
                raise ValueError(f"{path}:{line_no}: cannot spell {word!r}: {err}") from None
        unknown = [t for t in spelling if t not in known]
        if unknown:
            raise ValueError(f"{path}:{line_no}: tokens {unknown} of {word!r} are not in the "
                             f"tokenizer's {len(known)} tokens")
        entries.append((word, spelling))
    if not entries:
        raise ValueError(f"{path}: the lexicon is empty")
    return entries


class BeamDecoder:
    """CTC beam search through torchaudio's flashlight-text decoder, built from a tokenizer.

    Lexicon-free by default; with a ``lexicon`` (a word list, or words with spellings) the
    search only emits lexicon words, and with ``lm`` (a KenLM arpa/binary file) it adds
    ``lm_weight`` x the word n-gram score. Without a lexicon flashlight treats every token as
    a word, so an ``lm`` there must be a token-level n-gram. For letters the word boundary is ``|``; word pieces
    mark word starts themselves, so the blank doubles as flashlight's silence token, as in
    fairseq's flashlight decoder.
    """

    def __init__(self, tokenizer: Tokenizer, options: BeamOptions | None = None, *,
                 lexicon: str | Path | None = None, lm: str | Path | None = None) -> None:
        ctc_decoder = _require_flashlight()
        options = options or BeamOptions()
        if lm is not None and not Path(lm).is_file():
            raise FileNotFoundError(f"language model not found: {lm}")
        blank = tokenizer.tokens[tokenizer.blank_id]
        self._tokenizer = tokenizer
        self._has_lexicon = lexicon is not None
        lexicon_file = None
        try:
            if lexicon is not None:
                entries = read_lexicon(lexicon, tokenizer)
                fd, lexicon_file = tempfile.mkstemp(prefix="lexicon.", suffix=".txt")
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.writelines(f"{word}\t{' '.join(sp)}\n" for word, sp in entries)
            self._decoder = ctc_decoder(
                lexicon=lexicon_file, tokens=list(tokenizer.tokens),
                lm=str(lm) if lm is not None else None, beam_size=options.beam_size,
                beam_threshold=options.beam_threshold, lm_weight=options.lm_weight,
                word_score=options.word_score, sil_score=options.sil_score,
                blank_token=blank, sil_token=tokenizer.word_boundary or blank,
            )
        finally:
            if lexicon_file is not None:
                os.unlink(lexicon_file)

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[str]:
        """Best hypothesis per utterance as normalized words (``log_probs``: [B, T, V]).

        Words rather than ids: with a lexicon the decoder may place two words back to back
        without a boundary token, and only its word list says where one ends.
        """
        emissions = log_probs.detach().float().cpu().contiguous()
        hypotheses = self._decoder(emissions, lengths.detach().cpu().to(torch.int32))
        texts = []
        for hyps in hypotheses:
            if not hyps:
                texts.append("")
            elif self._has_lexicon:
                texts.append(" ".join(hyps[0].words))
            else:
                texts.append(self._tokenizer.decode(hyps[0].tokens.tolist()))
        return texts

