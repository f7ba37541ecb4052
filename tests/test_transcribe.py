"""`asr transcribe`: a tiny trained checkpoint turns real LibriSpeech files, in any rate,
channel count and length, into text, Kaldi text or JSON with word times. Its words are mostly
wrong (a 50k-parameter model, 10 steps): the tests check the pipeline, not accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import MINI

from asr.cli import main
from asr.transcribe import Transcriber, chunk_starts, collect_audio

pytestmark = pytest.mark.skipif(not (MINI / "LibriSpeech").is_dir(),
                                reason=f"needs the real-speech set ../shared/librispeech-mini, not found at {MINI}")
FILES = sorted((MINI / "LibriSpeech" / "test-clean").rglob("*.flac"))  # 5 utterances


@pytest.fixture(scope="module")
def transcriber(trained_run) -> Transcriber:
    return Transcriber(trained_run, device="cpu")


def test_audio_is_found_in_files_folders_and_list_files(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# test-clean\n{FILES[0]}\n\n{FILES[1]}\n")
    assert collect_audio([FILES[2], MINI / "LibriSpeech" / "test-clean", listing]) == [FILES[2], *FILES, *FILES[:2]]
    listing.write_text(f"{FILES[0]}\nmissing.flac\n")
    with pytest.raises(FileNotFoundError, match=r"list.txt:2: audio file 'missing.flac' not found"):
        collect_audio([listing])


@pytest.mark.parametrize(("seconds", "quiet_at", "expected"), [
    (10.0, None, [0]),  # shorter than a chunk: one piece
    (25.0, 9.0, [0, 9.0, 18.0]),  # cut at the quiet spot in the 2 s before each 10 s limit
    (20.5, 9.5, [0, 9.5, 19.0]),  # chunk ends 9.5 and 19.0: the quietest spot of each search window
])
def test_long_audio_is_cut_at_the_quietest_point_before_each_chunk_end(seconds, quiet_at, expected):
    rate = 1000
    samples = np.ones(int(seconds * rate), dtype=np.float32)
    if quiet_at is not None:
        for t in np.arange(quiet_at, seconds, quiet_at):
            samples[int(t * rate) - 10:int(t * rate) + 10] = 0.0
    assert [s / rate for s in chunk_starts(samples, rate, 10.0)] == pytest.approx(expected, abs=0.011)


def test_any_rate_and_channel_count_gives_the_text_of_the_original(transcriber, tmp_path):
    samples, rate = sf.read(str(FILES[0]), dtype="float32")
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([samples, samples], axis=1), rate, subtype="FLOAT")
    import torchaudio.functional as F

    upsampled = tmp_path / "44k.wav"
    sf.write(upsampled, F.resample(torch.from_numpy(samples), rate, 44100).numpy(), 44100, subtype="FLOAT")
    original, two_channels, resampled = transcriber.transcribe([FILES[0], stereo, upsampled])
    assert original.text and two_channels.text == original.text
    assert resampled.duration == pytest.approx(original.duration, abs=1e-3)
    assert resampled.text == original.text  # 16 -> 44.1 -> 16 kHz changes the features by little


def test_a_long_file_is_decoded_in_chunks_and_joined_with_word_times(transcriber, tmp_path):
    pieces = [sf.read(str(f), dtype="float32")[0] for f in FILES[:3]]
    long_file = tmp_path / "long.flac"
    sf.write(long_file, np.concatenate(pieces), 16000)
    (whole,) = transcriber.transcribe([long_file], chunk_seconds=8.0, timings=True)
    duration = sum(len(p) for p in pieces) / 16000
    assert whole.duration == pytest.approx(duration)
    assert whole.words and " ".join(w.word for w in whole.words) == whole.text
    starts = [w.start for w in whole.words]
    assert starts == sorted(starts) and all(0 <= w.start < w.end <= duration + 0.1 for w in whole.words)
    assert all(0.0 <= w.confidence <= 1.0 for w in whole.words)
    assert max(w.end for w in whole.words) > 8.0  # words from later chunks are shifted by their start


def test_cli_writes_text_kaldi_and_json(trained_run, transcriber, tmp_path, capsys):
    expected = [t.text for t in transcriber.transcribe(FILES)]
    assert main(["transcribe", str(trained_run), str(MINI / "LibriSpeech" / "test-clean"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    out = tmp_path / "hyp" / "text"
    assert main(["transcribe", str(trained_run), *map(str, FILES), "--format", "kaldi", "--out", str(out)]) == 0
    assert out.read_text().splitlines() == [f"{f.stem} {t}".rstrip() for f, t in zip(FILES, expected, strict=True)]
    assert main(["transcribe", str(trained_run), str(FILES[0]), "--format", "json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["audio"], row["id"], row["text"]) == (str(FILES[0]), FILES[0].stem, expected[0])
    assert set(row["words"][0]) == {"word", "start", "end", "confidence"}


def test_beam_search_decodes_too(trained_run, capsys):
    pytest.importorskip("flashlight.lib.text.decoder", reason="beam search needs flashlight-text")
    assert main(["transcribe", str(trained_run), str(FILES[0]), "--decoder", "beam", "--beam-size", "8"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


@pytest.mark.parametrize(("content", "message"), [
    (b"not a checkpoint at all", "not a readable asr checkpoint"),
    (None, "checkpoint format version None, expected 1"),  # a torch file of another program
], ids=["corrupt", "foreign"])
@pytest.mark.parametrize("command", ["transcribe", "export", "eval"])
def test_a_corrupt_or_foreign_checkpoint_is_one_clear_line(tmp_path, capsys, content, message, command):
    path = tmp_path / "model.pt"
    if content is None:
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    else:
        path.write_bytes(content)
    argv = {"transcribe": ["transcribe", str(path), str(FILES[0])],
            "export": ["export", str(path), "--out", str(tmp_path / "export")],
            "eval": ["eval", "--checkpoint", str(path), "--data", str(MINI), "--out", str(tmp_path / "e")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"asr {command}: error: {path}") and message in err and len(err.splitlines()) == 1


def test_every_option_has_help_and_shows_its_default():
    from asr.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, subparser in sub.choices.items():
        text = subparser.format_help()
        for action in subparser._actions:
            if action.dest == "help":
                continue
            assert action.help, f"asr {name} {action.option_strings or action.dest}: no help text"
            if action.option_strings and action.default not in (None, False, [], "==SUPPRESS=="):
                assert "default" in subparser._get_formatter()._get_help_string(action), (name, action.dest)
        assert "(default:" in text or name in ("config", "results", "train")
