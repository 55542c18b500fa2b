"""`audiofind duplicates`: exact copies by hash, near copies by whole-file vectors, wasted bytes; nothing deleted."""

import json
import shutil
from pathlib import Path

import audiogen
import numpy as np
from modelkit import register_tiny
from typer.testing import CliRunner

from audiofind.cli import app

runner = CliRunner()
SR = audiogen.SAMPLE_RATE
# The synthetic tiny model puts every vector in a narrow cone (different generated sounds sit 5e-4 to 4e-3 apart,
# transcoded copies under 2e-5), so these tests pass their own threshold; the default is for the real model.
TINY_NEAR = 1e-4


def run(*args: object, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    return result.stdout


def resampled(x: np.ndarray, sr: int) -> np.ndarray:
    t = np.linspace(0, x.shape[-1] - 1, int(x.shape[-1] * sr / SR))
    return np.stack([np.interp(t, np.arange(x.shape[-1]), c) for c in x]).astype(np.float32)


def test_transcoded_copies_group_and_exact_copies_waste_bytes(tmp_path: Path) -> None:
    register_tiny()
    root = tmp_path / "lib"
    root.mkdir()
    tone, sweep, hiss = audiogen.sine(440, 3.0), audiogen.chirp(300, 3000, 3.0), audiogen.noise(3.0, seed=1)
    tones = [audiogen.write_audio(root / "tone.wav", tone), audiogen.write_audio(root / "tone.flac", tone),
             audiogen.write_audio(root / "tone.mp3", tone),
             audiogen.write_audio(root / "tone 48k.wav", resampled(tone, 48000), sr=48000)]  # fmt: skip
    sweeps = [audiogen.write_audio(root / "sweep.wav", sweep), audiogen.write_audio(root / "sweep.flac", sweep)]
    hisses = [audiogen.write_audio(root / "hiss.wav", hiss), Path(shutil.copy(root / "hiss.wav", root / "hiss copy.wav"))]
    run("index", root, "-w", "tiny")
    groups = json.loads(run("duplicates", "--json", "--near", TINY_NEAR))
    by_paths = {frozenset(g["paths"]): g for g in groups}
    assert set(by_paths) == {frozenset(map(str, tones)), frozenset(map(str, sweeps)), frozenset(map(str, hisses))}
    exact = by_paths[frozenset(map(str, hisses))]
    size = hisses[0].stat().st_size
    assert exact == {"kind": "exact", "paths": sorted(map(str, hisses)), "bytes": 2 * size, "wasted": size}
    near = by_paths[frozenset(map(str, tones))]
    sizes = [p.stat().st_size for p in tones]
    assert near["kind"] == "near" and near["bytes"] == sum(sizes) and near["wasted"] == sum(sizes) - max(sizes)
    assert all(p.exists() for p in tones + sweeps + hisses)  # it never deletes
    # Under a folder only; and with --near 0 only exact copies remain.
    assert json.loads(run("duplicates", root / "nowhere", "--json")) == []
    assert [g["kind"] for g in json.loads(run("duplicates", root, "--json", "--near", 0))] == ["exact"]
    assert "hiss copy.wav" in run("duplicates", "--near", TINY_NEAR)


def test_bench_near_measures_copies_against_different_sounds(tmp_path: Path) -> None:
    register_tiny()
    report = json.loads(run("bench", "near", "-w", "tiny", "--device", "cpu", "--json"))
    assert set(report) == {"sounds", "copies", "different", "suggested"} and report["sounds"] == 8
    copies = report["copies"]
    assert set(copies) == {"flac", "mp3", "48k", "trim_start", "trim_end"}
    assert copies["flac"] < 1e-6 < copies["mp3"]  # lossless: the very samples again; lossy: not quite
    assert report["different"] > 0
    worst = max(copies.values())
    if worst < report["different"]:
        assert worst < report["suggested"] < report["different"]
    else:  # the synthetic model's narrow cone: nothing separates them, and it says so
        assert report["suggested"] is None
    (tmp_path / "one").mkdir()
    audiogen.write_audio(tmp_path / "one" / "a.wav", audiogen.sine(440, 1.0))
    result = runner.invoke(app, ["bench", "near", str(tmp_path / "one"), "-w", "tiny"])
    assert result.exit_code == 2 and "fewer than two readable audio files" in result.stderr
    result = runner.invoke(app, ["bench", "near", str(tmp_path / "nope"), "-w", "tiny"])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {tmp_path / 'nope'} is not a folder."
