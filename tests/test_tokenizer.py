"""Tokenizers: letters and sentencepiece share one interface, blank = 0, exact round trips."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from asr.text.tokenizer import (
    LetterTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    read_texts,
    tokenizer_from_dict,
    train_sentencepiece,
)

MINI = Path(__file__).resolve().parents[1].parent / "shared" / "librispeech-mini"

TEXTS = [
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "PACK MY BOX WITH FIVE DOZEN LIQUOR JUGS",
    "HOW VEXINGLY QUICK DAFT ZEBRAS JUMP",
    "SPHINX OF BLACK QUARTZ JUDGE MY VOW",
    "I DON'T KNOW WHERE JAMES'S DOG WENT",
    "THE FIVE BOXING WIZARDS JUMP QUICKLY",
] * 4


@pytest.fixture(scope="module")
def unigram() -> SentencePieceTokenizer:
    return train_sentencepiece(TEXTS, vocab_size=48, model_type="unigram")


def _write_manifest(path: Path, texts: list[str]) -> Path:
    lines = [json.dumps({"id": f"u{i}", "audio": f"u{i}.flac", "duration": 1.0, "text": t})
             for i, t in enumerate(texts)]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- letters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ids"), [
    ("A", [3]),
    ("AB C", [3, 4, 1, 5]),
    ("DON'T", [6, 17, 16, 2, 22]),
    ("Z  Y", [28, 1, 27]),  # runs of spaces are one boundary
    ("", []),
])
def test_letters_ids(text, ids):
    assert LetterTokenizer().encode(text) == ids


@pytest.mark.parametrize(("ids", "text"), [
    ([3, 0, 4, 1, 5], "AB C"),  # blanks are ignored
    ([1, 3, 1, 1, 4, 1], "A B"),  # leading, repeated and trailing boundaries
    ([0, 0], ""),
])
def test_letters_decode(ids, text):
    assert LetterTokenizer().decode(ids) == text


def test_letters_alphabet_is_blank_boundary_apostrophe_and_a_to_z():
    tok = LetterTokenizer()
    assert (tok.blank_id, tok.vocab_size, tok.word_boundary) == (0, 29, "|")
    assert tok.tokens[:4] == ["<blank>", "|", "'", "A"] and tok.tokens[-1] == "Z"
    assert isinstance(tok, Tokenizer)


@pytest.mark.parametrize(("text", "char"), [("ROOM 101", "'1'"), ("CAFÉ", "'É'"), ("a", "'a'")])
def test_letters_unknown_character_is_an_error_naming_it(text, char):
    with pytest.raises(ValueError, match=f"character {char}"):
        LetterTokenizer().encode(text)


def test_letters_replacements_map_characters_explicitly():
    tok = LetterTokenizer(replacements={"É": "E", "-": " "})
    assert tok.decode(tok.encode("CAFÉ AU-LAIT")) == "CAFE AU LAIT"
    assert tokenizer_from_dict(tok.to_dict()).encode("É") == tok.encode("E")
    with pytest.raises(ValueError, match="not in the alphabet"):
        LetterTokenizer(replacements={"É": "é"})


def test_letters_round_trip_every_real_librispeech_transcript():
    if not MINI.is_dir():
        pytest.skip(f"librispeech-mini not found at {MINI}")
    lines = [line for f in sorted(MINI.rglob("*.trans.txt")) for line in f.read_text().splitlines()]
    texts = [line.split(" ", 1)[1] for line in lines if line.strip()]
    assert len(texts) == 115
    tok = LetterTokenizer()
    for text in texts:
        assert tok.decode(tok.encode(text)) == text


# --- sentencepiece ----------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_round_trip_with_blank_at_zero(model_type):
    tok = train_sentencepiece(TEXTS, vocab_size=48, model_type=model_type)
    assert (tok.blank_id, tok.vocab_size, tok.tokens[0]) == (0, 48, "<blank>")
    for text in set(TEXTS):
        ids = tok.encode(text)
        assert ids and 0 not in ids
        assert tok.decode(ids) == text
        assert tok.decode([0, *ids[:1], 0, *ids[1:], 0]) == text  # blanks are ignored


def test_sentencepiece_training_is_deterministic(unigram):
    again = train_sentencepiece(list(TEXTS), vocab_size=48, model_type="unigram")
    assert again.model_bytes == unigram.model_bytes
    assert again.identity() == unigram.identity()


def test_identity_tells_tokenizers_apart(unigram):
    bpe = train_sentencepiece(TEXTS, vocab_size=48, model_type="bpe")
    ids = {t.identity()["hash"] for t in (unigram, bpe, LetterTokenizer())}
    assert len(ids) == 3
    assert unigram.identity()["kind"] == "sentencepiece" and unigram.identity()["vocab_size"] == 48


def test_sentencepiece_unknown_character_is_an_error_naming_it(unigram):
    with pytest.raises(ValueError, match="never seen in training: '7'"):
        unigram.encode("THE 7 DOGS")


def test_sentencepiece_vocabulary_too_large_for_the_text_is_an_error():
    with pytest.raises(ValueError, match="vocab_size=5000"):
        train_sentencepiece(TEXTS[:3], vocab_size=5000)


@pytest.mark.parametrize("make", [LetterTokenizer, lambda: train_sentencepiece(TEXTS, 48, "bpe")])
def test_to_dict_survives_a_weights_only_checkpoint(make):
    tok = make()
    buffer = io.BytesIO()
    torch.save({"tokenizer": tok.to_dict()}, buffer)
    buffer.seek(0)
    restored = tokenizer_from_dict(torch.load(buffer, weights_only=True)["tokenizer"])
    assert restored.identity() == tok.identity()
    assert restored.encode(TEXTS[4]) == tok.encode(TEXTS[4])


@pytest.mark.parametrize(("d", "message"), [
    ({"kind": "words"}, "allowed values are letters, sentencepiece"),
    ({"kind": "sentencepiece"}, "base64 model"),
    ({"kind": "letters", "tokens": ["<blank>", "A"]}, "differs from this code's"),
])
def test_tokenizer_from_bad_dict_is_an_error(d, message):
    with pytest.raises(ValueError, match=message):
        tokenizer_from_dict(d)


# --- building, saving, loading ------------------------------------------------------------------


def test_build_sentencepiece_from_texts_then_load(tmp_path):
    tok = build_tokenizer("sentencepiece", tmp_path / "tok", texts=TEXTS, vocab_size=40,
                          model_type="bpe")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    assert (tmp_path / "tok" / "sentencepiece.model").read_bytes() == tok.model_bytes
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.identity() == tok.identity() and loaded.vocab_size == 40


def test_every_text_source_reads_the_same_texts(tmp_path):
    from asr.data.shards import build_index, save_index

    n = len(TEXTS)
    index = build_index("train", tmp_path, ["shard-000000.tar"], keys=[f"u{i}" for i in range(n)],
                        texts=TEXTS, speakers=["s"] * n, shard=[0] * n, offset=range(0, 1000 * n, 1000),
                        size=[1000] * n, duration=[1.0] * n, num_samples=[16000] * n)
    save_index(index, tmp_path)
    kaldi = tmp_path / "text"
    kaldi.write_text("".join(f"u{i} {t}\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    assert read_texts(tmp_path) == TEXTS  # a shard split folder
    assert read_texts(_write_manifest(tmp_path / "train.jsonl", TEXTS)) == TEXTS
    assert read_texts(kaldi) == TEXTS


def test_the_same_texts_give_the_same_tokenizer(tmp_path):
    first = build_tokenizer("sentencepiece", tmp_path / "a", texts=TEXTS, vocab_size=48)
    again = build_tokenizer("sentencepiece", tmp_path / "b", texts=iter(TEXTS), vocab_size=48)
    assert first.identity() == again.identity()


def test_build_letters_checks_the_training_text(tmp_path):
    with pytest.raises(ValueError, match=r"utterance 2: .*character '1'"):
        build_tokenizer("letters", tmp_path / "tok", texts=["GOOD TEXT", "ROOM 101"])
    tok = build_tokenizer("letters", tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").identity() == tok.identity()


@pytest.mark.parametrize(("kind", "texts", "message"), [
    ("sentencepiece", None, "training texts are needed"),
    ("sentencepiece", ["", " "], "no non-empty text"),
    ("words", None, "allowed values are letters, sentencepiece"),
])
def test_build_tokenizer_bad_input_is_a_clear_error(tmp_path, kind, texts, message):
    with pytest.raises(ValueError, match=message):
        build_tokenizer(kind, tmp_path / "tok", texts=texts)


@pytest.mark.parametrize(("source", "error", "message"), [
    ("missing.jsonl", FileNotFoundError, "not found"),
    ("bad.jsonl", ValueError, r"bad.jsonl:2: expected an object with a string 'text' field"),
    ("broken.jsonl", ValueError, r"broken.jsonl:1: not a JSON line"),
])
def test_bad_text_sources_name_file_and_line(tmp_path, source, error, message):
    (tmp_path / "bad.jsonl").write_text('{"text": "HELLO"}\n{"txt": "WORLD"}\n')
    (tmp_path / "broken.jsonl").write_text("HELLO\n")
    with pytest.raises(error, match=message):
        read_texts(tmp_path / source)


def test_load_tokenizer_from_missing_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="asr tokenizer"):
        load_tokenizer(tmp_path)


def test_cli_tokenizer_builds_sentencepiece(tmp_path, capsys):
    from asr.cli import main

    manifest = _write_manifest(tmp_path / "train.jsonl", TEXTS)
    assert main(["tokenizer", "--out", str(tmp_path / "tok"), "--kind", "sentencepiece",
                 "--text-from", str(manifest), "--vocab-size", "40"]) == 0
    assert "'vocab_size': 40" in capsys.readouterr().out
    assert load_tokenizer(tmp_path / "tok").vocab_size == 40
