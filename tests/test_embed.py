"""`audiofind embed` through the CLI, as a user runs it."""

import json
import wave
from pathlib import Path

import numpy as np
import pytest
from modelkit import DATA, register_tiny, synthetic_state_dict
from typer.testing import CliRunner

from audiofind.cli import app
from audiofind.model import weights
from audiofind.model.config import AudioCLIPConfig

runner = CliRunner()
REF = np.load(DATA / "public_reference.npz")


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_embed_full_size_matches_reference(tmp_path: Path) -> None:
    # The fixture's synthetic weights at full size, saved the way fine-tuned/imported models are stored.
    weights.save_model(synthetic_state_dict(AudioCLIPConfig()), "synthetic", AudioCLIPConfig().to_dict(), {})
    files = [write_wav(tmp_path / f"{n}.wav", REF[f"audio__{n}"][0]) for n in REF["audio_names"]]
    captions = [str(c) for c in REF["caption_texts"][:3]]
    args = ["embed", *map(str, files), "-w", "synthetic", "--json"]
    for c in captions:
        args += ["--text", c]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in rows] == [str(f) for f in files] + captions
    assert [r["kind"] for r in rows] == ["audio", "audio", "text", "text", "text"]
    for row, name in zip(rows, REF["audio_names"]):
        ref = REF[f"audio_emb_f64__{name}"][0]
        assert np.abs(unit(np.array(row["embedding"])) - unit(ref)).max() / np.abs(unit(ref)).max() < 5e-5
    text = np.array([r["embedding"] for r in rows[2:]])
    ref = unit(REF["text_emb_f64"][:3])
    assert np.abs(unit(text) - ref).max() / np.abs(ref).max() < 1e-5


def test_embed_is_deterministic_whatever_the_batch(tmp_path: Path) -> None:
    name = register_tiny()
    rng = np.random.default_rng(1)
    files = [write_wav(tmp_path / f"{i}.wav", rng.normal(0, 4000, 20000 + 3000 * i)) for i in range(3)]
    alone = runner.invoke(app, ["embed", str(files[1]), "-w", name, "--json", "-t", "rain on a tin roof"])
    mixed = runner.invoke(
        app,
        [
            "embed",
            *map(str, files),
            "-w",
            name,
            "--json",
            "-t",
            "x",
            "-t",
            "rain on a tin roof",
            "-t",
            "a much longer caption about a slowly creaking door",
        ],
    )
    a = [json.loads(line) for line in alone.stdout.splitlines()]
    m = {r["input"]: r["embedding"] for r in map(json.loads, mixed.stdout.splitlines())}
    assert a[0]["embedding"] == m[str(files[1])]  # bitwise: JSON floats round-trip exactly
    assert a[1]["embedding"] == m["rain on a tin roof"]


def test_embed_reports_a_bad_file_and_prints_the_rest(tmp_path: Path) -> None:
    name = register_tiny()
    good = write_wav(tmp_path / "good.wav", np.zeros(5000))
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio at all")
    result = runner.invoke(app, ["embed", str(bad), str(good), "-w", name, "--json"])
    assert result.exit_code == 1
    assert [json.loads(line)["input"] for line in result.stdout.splitlines()] == [str(good)]
    assert result.stderr.count("\n") == 1 and "bad.wav" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["embed", "missing.wav"], 1, "missing.wav"),
        (["embed", "-t", "hi", "-w", "no-such-model"], 2, "Unknown model"),
        (["embed", "-t", "hi", "--device", "cuda:7"], 2, "cuda"),
        (["embed", "-t", "hi", "--device", "tpu"], 2, "tpu"),
        (["embed", "-t", "hi"], 1, "audiofind weights download audioclip-full"),
        (["embed"], 2, "Nothing to embed"),
        (["embed", "-t", "hi", "--device", "cpu", "--precision", "tf32"], 2, "for CUDA devices"),
        (["embed", "-t", "hi", "--precision", "fp16"], 2, "Unknown precision 'fp16'"),
    ],
)
def test_embed_errors_are_one_line(tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_empty_file_is_reported(tmp_path: Path) -> None:
    name = register_tiny()
    empty = tmp_path / "empty.wav"
    empty.touch()
    result = runner.invoke(app, ["embed", str(empty), "-w", name])
    assert result.exit_code == 1 and "empty" in result.stderr


def test_embed_refuses_recordings_too_long_for_one_clip(tmp_path: Path) -> None:
    import audiogen

    name = register_tiny()
    long = audiogen.write_audio(tmp_path / "long.flac", audiogen.silence(301.0))
    result = runner.invoke(app, ["embed", str(long), "-w", name])
    assert result.exit_code == 1 and "index long recordings" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
