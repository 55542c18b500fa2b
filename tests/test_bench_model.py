"""`bench clotho` and `bench captions` with a real model rank exactly as the embeddings `embed` prints."""

import csv
import json
from pathlib import Path

import audiogen
import numpy as np
import pytest
from modelkit import register_tiny, synthetic_state_dict
from typer.testing import CliRunner

from audiofind.cli import app
from audiofind.eval.metrics import METRICS, ranks_from_scores, summarize
from audiofind.model import weights
from audiofind.model.config import AudioCLIPConfig

runner = CliRunner()
SOUNDS = {
    "beep.wav": (audiogen.sine, (2000, 1.0)),
    "hum.wav": (audiogen.sine, (60, 1.5)),
    "hiss.wav": (audiogen.noise, (1.2,)),
    "sweep.wav": (audiogen.chirp, (200, 6000, 2.0)),
    "buzz.wav": (audiogen.square, (110, 0.8)),
    "click track.wav": (audiogen.square, (4, 1.0)),
}
WORDS = ["a high beep", "a low hum", "white noise hissing", "a rising sweep", "a harsh buzz", "steady clicks"]


def make_clotho(root: Path) -> Path:
    (root / "evaluation").mkdir(parents=True)
    with open(root / "clotho_captions_evaluation.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
        for (name, (make, args)), word in zip(SOUNDS.items(), WORDS):
            audiogen.write_audio(root / "evaluation" / name, make(*args))
            out.writerow([name] + [f"{word}, take {i}" for i in range(1, 6)])
    return root


def test_bench_clotho_ranks_like_embed(tmp_path: Path) -> None:
    weights.save_model(synthetic_state_dict(AudioCLIPConfig()), "full", AudioCLIPConfig().to_dict(), {})
    root = make_clotho(tmp_path / "clotho")
    result = runner.invoke(
        app, ["bench", "clotho", str(root), "-w", "full", "--json", "--write-submission", str(tmp_path / "sub.csv")]
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert {"R1", "R5", "R10", "mAP10"} <= set(scores) and scores["n_queries"] == 30

    names = list(SOUNDS)
    captions = [f"{w}, take {i}" for w in WORDS for i in range(1, 6)]
    args = ["embed", *[str(root / "evaluation" / n) for n in names], "-w", "full", "--json"]
    for c in captions:
        args += ["--text", c]
    rows = [json.loads(line) for line in runner.invoke(app, args).stdout.splitlines()]
    audio = np.array([r["embedding"] for r in rows if r["kind"] == "audio"])
    text = np.array([r["embedding"] for r in rows if r["kind"] == "text"])
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    expected = [[names[j] for j in np.argsort(-(t @ audio.T), kind="stable")] for t in text]

    with open(tmp_path / "sub.csv", newline="") as f:
        submission = {row["caption"]: [row[f"file_name_{i}"] for i in range(1, 7)] for row in csv.DictReader(f)}
    assert [submission[c] for c in captions] == expected
    # The second run reuses the cached clip embeddings and gives the same scores.
    again = runner.invoke(app, ["bench", "clotho", str(root), "-w", "full", "--json"])
    assert json.loads(again.stdout) == scores


def test_bench_captions_ranks_like_embed(tmp_path: Path) -> None:
    """A user's path,caption pairs: every caption ranks every listed file, exactly as the embed vectors order them."""
    name = register_tiny()
    folder = tmp_path / "mine" / "sounds"
    folder.mkdir(parents=True)
    rows = ["path,caption"]
    for (file, (make, args)), word in zip(SOUNDS.items(), WORDS):
        audiogen.write_audio(folder / file, make(*args))
        rows += [f"sounds/{file},{word}", f"sounds/{file},{word} again"]
    rows.append("sounds/absent.wav,not there")  # skipped and reported, never ranked
    pairs = tmp_path / "mine" / "pairs.csv"
    pairs.write_text("\n".join(rows) + "\n")
    sub = tmp_path / "sub.csv"
    result = runner.invoke(app, ["bench", "captions", str(pairs), "-w", name, "--json", "--write-submission", str(sub)])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    clotho_keys = {
        "split",
        "source",
        "n_clips",
        "R1",
        "R5",
        "R10",
        "mAP10",
        "R1_ci",
        "R5_ci",
        "R10_ci",
        "mAP10_ci",
        "n_queries",
    }
    assert set(scores) == clotho_keys and scores["n_queries"] == 12 and scores["n_clips"] == 6
    assert "Skipped 1 bad rows" in result.stderr

    paths = [str((folder / f).resolve()) for f in SOUNDS]
    captions = [c for w in WORDS for c in (w, f"{w} again")]
    args = ["embed", *paths, "-w", name, "--json"]
    for c in captions:
        args += ["--text", c]
    rows = [json.loads(line) for line in runner.invoke(app, args).stdout.splitlines()]
    audio = np.array([r["embedding"] for r in rows if r["kind"] == "audio"])
    text = np.array([r["embedding"] for r in rows if r["kind"] == "text"])
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    similarity = text @ audio.T
    expected = [[paths[j] for j in np.argsort(-s, kind="stable")] for s in similarity]
    with open(sub, newline="") as f:
        submission = {row["caption"]: [row[f"file_name_{i}"] for i in range(1, 7)] for row in csv.DictReader(f)}
    assert [submission[c] for c in captions] == expected
    # The scores are those of the ranks the embed vectors give: caption 2k and 2k+1 belong to clip k.
    ranks = ranks_from_scores(similarity, np.repeat(np.arange(6), 2))
    assert {k: scores[k] for k in METRICS} == pytest.approx(summarize(ranks).metrics, abs=1e-12)
