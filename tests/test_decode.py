"""CTC decoding: greedy collapse rules, and beam search through flashlight-text."""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch

from asr.decode import BeamDecoder, BeamOptions, greedy_decode, read_lexicon
from asr.text.tokenizer import LetterTokenizer, train_sentencepiece

HAS_FLASHLIGHT = importlib.util.find_spec("flashlight") is not None
needs_flashlight = pytest.mark.skipif(not HAS_FLASHLIGHT, reason="flashlight-text is not installed "
                                      "(pip install flashlight-text)")
BLANK = "<blank>"


def one_hot_log_probs(frames: list[list[int]], vocab: int = 8) -> torch.Tensor:
    """[B, T, V] log-probs whose argmax is the given frame ids (rows padded with id 7)."""
    width = max(len(f) for f in frames)
    log_probs = torch.full((len(frames), width, vocab), -10.0)
    for b, row in enumerate(frames):
        for t, i in enumerate(row + [7] * (width - len(row))):
            log_probs[b, t, i] = 0.0
    return log_probs.log_softmax(-1)


@pytest.mark.parametrize(("frames", "tokens"), [
    ([1, 1, 0, 1], [1, 1]),  # a blank separates a real repeat
    ([1, 1, 1], [1]),  # repeats merge
    ([0, 0, 0], []),  # all blank
    ([1, 2, 1], [1, 2, 1]),
    ([0, 3, 0, 0, 3, 3, 0, 4], [3, 3, 4]),
    ([2], [2]),
    ([5, 0, 5, 5, 6, 6, 0], [5, 5, 6]),
])
def test_greedy_collapse_rules(frames, tokens):
    assert greedy_decode(one_hot_log_probs([frames]), torch.tensor([len(frames)])) == [tokens]


def test_greedy_ignores_frames_past_each_length():
    frames = [[1, 2, 3, 4], [5, 5, 0, 6]]
    log_probs = one_hot_log_probs(frames)
    assert greedy_decode(log_probs, torch.tensor([2, 3])) == [[1, 2], [5]]


def test_greedy_with_another_blank_id():
    assert greedy_decode(one_hot_log_probs([[0, 5, 5, 0, 0]]), torch.tensor([5]), blank_id=5) == [[0, 0]]


def test_greedy_matches_a_per_utterance_reference_on_random_batches():
    g = torch.Generator().manual_seed(0)
    log_probs = torch.randn(16, 50, 6, generator=g).log_softmax(-1)
    lengths = torch.randint(1, 51, (16,), generator=g)
    expected = []
    for row, n in zip(log_probs.argmax(-1).tolist(), lengths.tolist(), strict=True):
        expected.append([k for k, _ in itertools.groupby(row[:n]) if k != 0])
    assert greedy_decode(log_probs, lengths) == expected


# --- beam search --------------------------------------------------------------------------------


def test_beam_decoder_without_flashlight_says_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "flashlight.lib.text.decoder", None)
    with pytest.raises(ImportError, match="pip install flashlight-text"):
        BeamDecoder(LetterTokenizer())


def letter_emissions(frames: list[dict[str, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, T, 29] log-probs from per-frame {token: probability} (the rest shares 1e-4)."""
    tok = LetterTokenizer()
    probs = torch.full((1, len(frames), tok.vocab_size), 1e-4)
    for t, frame in enumerate(frames):
        for token, p in frame.items():
            probs[0, t, tok.tokens.index(token)] = p
    return (probs / probs.sum(-1, keepdim=True)).log(), torch.tensor([len(frames)])


# "MAT SAT" by a hair over "CAT SAT": greedy and lexicon-free beam read M.
AMBIGUOUS = [{"M": 0.55, "C": 0.45}, {BLANK: 1}, {"A": 1}, {"T": 1}, {"|": 1}, {"S": 1}, {"A": 1},
             {"T": 1}]
BIGRAM_ARPA = """\\data\\
ngram 1=6
ngram 2=2

\\1-grams:
-1.0\t<unk>
-1.0\t<s>\t-0.3
-1.0\t</s>
-1.0\tCAT\t-0.3
-1.0\tSAT\t-0.3
-1.0\tMAT\t-0.3

\\2-grams:
-0.1\t<s> CAT
-0.1\tCAT SAT

\\end\\
"""


@needs_flashlight
def test_lexicon_free_beam_agrees_with_greedy_on_a_clear_path():
    tok = LetterTokenizer()
    log_probs, lengths = letter_emissions(AMBIGUOUS)
    assert BeamDecoder(tok, BeamOptions(beam_size=8))(log_probs, lengths) == ["MAT SAT"]
    assert tok.decode(greedy_decode(log_probs, lengths)[0]) == "MAT SAT"


@needs_flashlight
def test_lexicon_restricts_words_and_the_lm_picks_between_them(tmp_path):
    tok = LetterTokenizer()
    (tmp_path / "words.txt").write_text("CAT\nSAT\nMAT\n")
    (tmp_path / "lm.arpa").write_text(BIGRAM_ARPA)
    misspelt, lengths = letter_emissions([{"C": 1}, {"A": 1}, {"D": 0.6, "T": 0.4}])
    assert tok.decode(greedy_decode(misspelt, lengths)[0]) == "CAD"
    assert BeamDecoder(tok, lexicon=tmp_path / "words.txt")(misspelt, lengths) == ["CAT"]

    log_probs, lengths = letter_emissions(AMBIGUOUS)
    with_lm = BeamDecoder(tok, BeamOptions(lm_weight=2.0), lexicon=tmp_path / "words.txt",
                          lm=tmp_path / "lm.arpa")
    assert with_lm(log_probs, lengths) == ["CAT SAT"]


@needs_flashlight
def test_beam_search_with_sentencepiece_pieces(tmp_path):
    texts = ["THE CAT SAT ON THE MAT", "A CAT AND A HAT", "THE HAT SAT THERE"] * 3
    tok = train_sentencepiece(texts, vocab_size=30, model_type="bpe")
    ids = tok.encode("THE CAT SAT")
    frames = [i for token in ids for i in (token, 0, 0)]  # CTC spikes
    log_probs = torch.full((1, len(frames), tok.vocab_size), -8.0)
    log_probs[0, torch.arange(len(frames)), torch.tensor(frames)] = 0.0
    log_probs = log_probs.log_softmax(-1)
    lengths = torch.tensor([len(frames)])
    assert BeamDecoder(tok)(log_probs, lengths) == ["THE CAT SAT"]
    (tmp_path / "words.txt").write_text("THE\nCAT\nSAT\nMAT\n")
    assert BeamDecoder(tok, lexicon=tmp_path / "words.txt")(log_probs, lengths) == ["THE CAT SAT"]


def test_lexicon_lines_are_spelled_with_the_tokenizer_or_checked(tmp_path):
    tok = LetterTokenizer()
    path = tmp_path / "lexicon.txt"
    path.write_text("CAT\nDON'T D O N ' T\n\n")
    assert read_lexicon(path, tok) == [("CAT", ["C", "A", "T"]), ("DON'T", ["D", "O", "N", "'", "T"])]
    path.write_text("CAT\nDOG D O G @\n")
    with pytest.raises(ValueError, match=r"lexicon.txt:2: tokens \['@'\] of 'DOG'"):
        read_lexicon(path, tok)
    path.write_text("CAT\nR2D2\n")
    with pytest.raises(ValueError, match=r"lexicon.txt:2: cannot spell 'R2D2'"):
        read_lexicon(path, tok)
