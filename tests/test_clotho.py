"""Clotho scoring: the official baseline figures, metrics on known ranks, jackknife intervals, the tiny-layout
pipeline with fake embedders, submissions in and out, the cache, and the errors a broken dataset raises."""

import csv
import json
import os
import sys
import types
import wave
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from audiofind.cli import app
from audiofind.errors import DatasetError
from audiofind.eval import clotho, clotho_csv
from audiofind.eval.metrics import jackknife_ci, ranks_from_scores, retrieval_metrics, summarize
from audiofind.train import data

CLOTHO = Path(__file__).parent / "data" / "clotho"
OFFICIAL = {"R1": 0.031579, "R5": 0.109474, "R10": 0.188325, "mAP10": 0.067934}
runner = CliRunner()


# -- a tiny Clotho layout and fake embedders -------------------------------------------------------------------


def make_layout(root: Path, n_clips: int, split: str = "evaluation") -> Path:
    """n_clips short silent WAVs under root/split and their captions CSV; caption k of clip i is 'clip i caption k'."""
    (root / split).mkdir(parents=True)
    rows = []
    for i in range(n_clips):
        name = f"clip {i:02d}, take.wav"  # a comma and a space: the CSV must quote it
        with wave.open(str(root / split / name), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(np.zeros(80 + i, dtype=np.int16).tobytes())
        rows.append([name] + [f"clip {i} caption {k}" for k in range(5)])
    with (root / f"clotho_captions_{split}.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([clotho_csv.GT_HEADER, *rows])
    return root


def clip_of(name: str) -> int:
    return int(name.split()[1].rstrip(","))


def one_hot_audio(n: int):
    """Clip i -> e_i, and a record of every clip it was asked to embed."""
    calls: list[str] = []

    def embed(paths: list[Path]) -> np.ndarray:
        calls.extend(p.name for p in paths)
        return np.eye(n, dtype=np.float32)[[clip_of(p.name) for p in paths]] * 3.0  # unnormalised on purpose

    embed.calls = calls  # type: ignore[attr-defined]
    return embed


def staircase_text(n: int):
    """Caption k of clip i puts k other clips above clip i, so its rank is k + 1."""

    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), n), dtype=np.float32)
        for row, text in enumerate(texts):
            i, k = clip_of(text), int(text.split()[-1])
            out[row, i] = 1.0
            for m in range(1, k + 1):
                out[row, (i + m) % n] = 2.0
        return out

    return embed


def perfect_text(n: int):
    return lambda texts: np.eye(n, dtype=np.float32)[[clip_of(t) for t in texts]]


def shifted_text(n: int):
    """Every caption prefers the next clip and ranks its own second."""
    return lambda texts: np.stack([np.eye(n)[(clip_of(t) + 1) % n] + 0.5 * np.eye(n)[clip_of(t)] for t in texts])


def random_text(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return lambda texts: rng.standard_normal((len(texts), n)).astype(np.float32)


# -- the official baseline -------------------------------------------------------------------------------------


def test_official_baseline_submission_scores_as_published():
    split = clotho.load_split(CLOTHO, need_audio=False)
    assert len(split.files) == 1045 and len(split.captions) == 5225
    result = clotho.score_submission(split, clotho.read_submission(CLOTHO / "baseline_submission.csv"))
    assert result.n_queries == 5225
    for name, value in OFFICIAL.items():
        assert result.metrics[name] == pytest.approx(value, abs=1e-6), name
        lo, hi = result.ci[name]
        assert lo < value < hi


def test_official_baseline_through_the_cli_json(tmp_path: Path):
    # DIR holds only the ground-truth CSV: no audio, no model.
    (tmp_path / "clotho_captions_evaluation.csv").write_bytes((CLOTHO / "clotho_captions_evaluation.csv").read_bytes())
    args = ["bench", "clotho", str(tmp_path), "--submission", str(CLOTHO / "baseline_submission.csv"), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for name, value in OFFICIAL.items():
        assert out[name] == pytest.approx(value, abs=1e-6)
        assert out[f"{name}_ci"][0] < out[name] < out[f"{name}_ci"][1]
    assert out["n_queries"] == 5225 and out["split"] == "evaluation"


def test_cli_table_shows_the_metrics():
    res = runner.invoke(app, ["bench", "clotho", str(CLOTHO), "--submission", str(CLOTHO / "baseline_submission.csv")])
    assert res.exit_code == 0, res.output
    assert "mAP@10" in res.stdout and "0.0679" in res.stdout and "5225 captions" in res.stdout


def test_jackknife_matches_a_literal_leave_one_out_on_the_baseline():
    split = clotho.load_split(CLOTHO, need_audio=False)
    rows = clotho.read_submission(CLOTHO / "baseline_submission.csv")
    ranks = np.array(
        [
            names.index(split.files[f]) + 1 if split.files[f] in names else 11
            for (_, names), f in zip(rows, split.caption_file)
        ]
    )
    values = np.where(ranks <= 10, 1.0 / ranks, 0.0)  # per-query AP@10
    # astropy's jackknife_stats(values, np.mean, 0.95), which the official script calls, written out longhand.
    n = len(values)
    jack = np.array([np.delete(values, i).mean() for i in range(n)])
    std_err = np.sqrt((n - 1) * np.mean((jack - jack.mean()) ** 2))
    estimate = values.mean() - (n - 1) * (jack.mean() - values.mean())
    lo, hi = jackknife_ci(ranks)["mAP10"]
    assert lo == pytest.approx(estimate - 1.959963984540054 * std_err, abs=1e-12)
    assert hi == pytest.approx(estimate + 1.959963984540054 * std_err, abs=1e-12)


# -- metrics on hand-made ranks --------------------------------------------------------------------------------


def test_metrics_on_hand_made_ranks():
    m = retrieval_metrics(np.array([1, 2, 5, 10, 11, 100]))
    assert m["R1"] == pytest.approx(1 / 6)
    assert m["R5"] == pytest.approx(3 / 6)
    assert m["R10"] == pytest.approx(4 / 6)
    assert m["mAP10"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10) / 6)


def test_ranks_from_scores_breaks_ties_by_clip_order_and_sinks_nan():
    scores = np.array(
        [
            [0.1, 0.9, 0.5],  # relevant 2: one clip above
            [0.5, 0.5, 0.5],  # relevant 1: tied with clip 0, which comes first
            [0.5, 0.5, 0.5],  # relevant 0: first of the tie
            [np.nan, 0.2, 0.3],  # relevant 0 is NaN: last
            [0.0, np.nan, 0.3],  # a NaN elsewhere never ranks above
        ]
    )
    ranks = ranks_from_scores(scores, np.array([2, 1, 0, 0, 0]))
    assert ranks.tolist() == [2, 2, 1, 3, 2]


def test_jackknife_interval_contains_the_estimate_and_shrinks_with_more_queries():
    ranks = np.array([1, 3, 12, 2, 7, 1, 15, 4])
    small, large = jackknife_ci(ranks), jackknife_ci(np.tile(ranks, 16))
    point = retrieval_metrics(ranks)
    for name, value in point.items():
        assert small[name][0] < value < small[name][1]
        assert large[name][1] - large[name][0] < (small[name][1] - small[name][0]) / 3
    # A wider confidence level widens the interval.
    assert np.subtract(*jackknife_ci(ranks, alpha=0.01)["R5"][::-1]) > np.subtract(*small["R5"][::-1])


def test_summary_as_dict_is_the_json_shape():
    out = summarize(np.array([1, 2, 20])).as_dict()
    assert set(out) == {"R1", "R5", "R10", "mAP10", "R1_ci", "R5_ci", "R10_ci", "mAP10_ci", "n_queries"}
    assert out["n_queries"] == 3 and len(out["R1_ci"]) == 2
    json.dumps(out)


# -- the pipeline on a tiny layout -----------------------------------------------------------------------------


def test_perfect_embedder_scores_one(tmp_path: Path):
    split = clotho.load_split(make_layout(tmp_path, 4))
    seen: list[tuple[int, int]] = []
    progress = lambda done, total: seen.append((done, total))
    result, scores = clotho.evaluate(split, one_hot_audio(4), perfect_text(4), progress=progress)
    assert scores.shape == (20, 4)
    assert result.metrics == {"R1": 1.0, "R5": 1.0, "R10": 1.0, "mAP10": 1.0}
    assert seen[-1] == (24, 24)


def test_shifted_embedder_ranks_every_clip_second(tmp_path: Path):
    split = clotho.load_split(make_layout(tmp_path, 6))
    result, _ = clotho.evaluate(split, one_hot_audio(6), shifted_text(6))
    assert result.metrics == pytest.approx({"R1": 0.0, "R5": 1.0, "R10": 1.0, "mAP10": 0.5})


def test_staircase_embedder_gives_known_values(tmp_path: Path):
    split = clotho.load_split(make_layout(tmp_path, 12))
    result, _ = clotho.evaluate(split, one_hot_audio(12), staircase_text(12))
    # Each clip's captions rank it 1st to 5th.
    expected_map = (1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 5
    assert result.metrics == pytest.approx({"R1": 0.2, "R5": 1.0, "R10": 1.0, "mAP10": expected_map})


@pytest.mark.parametrize("n_clips", [4, 13])  # fewer than ten clips leaves empty columns
def test_written_submission_scores_like_the_run(tmp_path: Path, n_clips: int):
    split = clotho.load_split(make_layout(tmp_path / "data", n_clips))
    result, scores = clotho.evaluate(split, one_hot_audio(n_clips), random_text(n_clips))
    out = tmp_path / "submission.csv"
    clotho.write_submission(out, split, scores)
    rows = clotho.read_submission(out)
    assert [caption for caption, _ in rows] == split.captions
    assert all(len(names) == min(10, n_clips) for _, names in rows)
    again = clotho.score_submission(split, rows)
    assert again.metrics == pytest.approx(result.metrics)
    for name in result.ci:
        assert again.ci[name] == pytest.approx(result.ci[name])
    if n_clips > 10:
        assert result.metrics["R10"] < 1.0  # some clips fell below the cutoff, and the CSV agrees


def test_clip_vectors_are_cached_per_clip(tmp_path: Path):
    split = clotho.load_split(make_layout(tmp_path / "data", 5))
    cache = tmp_path / "cache" / "clotho-test.npz"
    first = one_hot_audio(5)
    r1, s1 = clotho.evaluate(split, first, perfect_text(5), cache=cache)
    assert len(first.calls) == 5 and cache.exists()
    second = one_hot_audio(5)
    r2, s2 = clotho.evaluate(split, second, perfect_text(5), cache=cache)
    assert second.calls == [] and np.allclose(s1, s2)
    # A changed clip is embedded again, alone.
    changed = split.paths()[2]
    os.utime(changed, ns=(1, 1))
    third = one_hot_audio(5)
    clotho.evaluate(split, third, perfect_text(5), cache=cache)
    assert third.calls == [changed.name]


def test_unreadable_cache_is_ignored(tmp_path: Path):
    split = clotho.load_split(make_layout(tmp_path / "data", 3))
    cache = tmp_path / "broken.npz"
    cache.write_bytes(b"not a zip")
    result, _ = clotho.evaluate(split, one_hot_audio(3), perfect_text(3), cache=cache)
    assert result.metrics["R1"] == 1.0


def test_other_splits_use_their_own_csv_and_folder(tmp_path: Path):
    split = clotho.load_split(make_layout(tmp_path, 3, split="validation"), "validation")
    assert split.audio_dir == tmp_path / "validation" and len(split.captions) == 15
    with pytest.raises(DatasetError, match="clotho_captions_evaluation.csv"):
        clotho.load_split(tmp_path)


# -- broken datasets and submissions ---------------------------------------------------------------------------


def test_missing_clip_is_named(tmp_path: Path):
    make_layout(tmp_path, 4)
    (tmp_path / "evaluation" / "clip 02, take.wav").unlink()
    with pytest.raises(DatasetError, match="clip 02, take.wav"):
        clotho.load_split(tmp_path)
    clotho.load_split(tmp_path, need_audio=False)  # scoring a submission needs no audio


def test_extra_clip_is_named(tmp_path: Path):
    make_layout(tmp_path, 3)
    (tmp_path / "evaluation" / "stray.wav").write_bytes(b"RIFF")
    with pytest.raises(DatasetError, match="stray.wav"):
        clotho.load_split(tmp_path)


def test_malformed_row_names_its_line(tmp_path: Path):
    make_layout(tmp_path, 3)
    with (tmp_path / "clotho_captions_evaluation.csv").open("a", encoding="utf-8") as f:
        f.write("broken.wav,only one caption\n")
    with pytest.raises(DatasetError, match=r"line 5: expected 6 fields"):
        clotho.load_split(tmp_path, need_audio=False)


# A row appended to a 3-clip layout (line 5): what the benchmark raises, and what fine-tuning skips it with (None: kept).
ROWS = [
    (
        "broken.wav,only one caption",
        "expected 6 fields (file_name and 5 captions), found 2.",
        "expected a file name and 5 captions, found 2 fields.",
    ),
    (",a,b,c,d,e", "the file name is empty.", "the file name is empty."),
    ("x.wav,,,,,", "clip 'x.wav' has an empty caption.", "x.wav has no caption."),
    ("x.wav,a,,c,d,e", "clip 'x.wav' has an empty caption.", None),
    ('"clip 00, take.wav",a,b,c,d,e', "clip 'clip 00, take.wav' is listed twice (first on row 1).", None),
    ("gone.wav,a,b,c,d,e", None, "gone.wav is not in {audio}."),
    (" , ,,,, ", "the file name is empty.", None),
    ("", None, None),
]


@pytest.mark.parametrize(("row", "strict", "lenient"), ROWS)
def test_one_captions_parser_strict_for_the_benchmark_lenient_for_training(
    tmp_path: Path, row: str, strict: str | None, lenient: str | None
) -> None:
    make_layout(tmp_path, 3)
    (tmp_path / "evaluation" / "x.wav").write_bytes((tmp_path / "evaluation" / "clip 01, take.wav").read_bytes())
    csv_path = tmp_path / "clotho_captions_evaluation.csv"
    with csv_path.open("a", encoding="utf-8") as f:
        f.write(row + "\n")
    if strict:
        with pytest.raises(DatasetError) as raised:
            clotho.load_split(tmp_path, need_audio=False)
        assert str(raised.value) == f"{csv_path} line 5: {strict}"
    else:
        assert len(clotho.load_split(tmp_path, need_audio=False).files) == 3 + bool(row)
    clips = data.read_clotho(tmp_path, "evaluation")
    if lenient:
        assert clips.problems == (f"{csv_path.name} line 5: {lenient.format(audio=tmp_path / 'evaluation')}",)
        assert len(clips) == 3
    else:
        assert clips.problems == () and len(clips) == 3 + (row.strip(" ,") != "")


def test_bad_header_is_refused(tmp_path: Path):
    (tmp_path / "clotho_captions_evaluation.csv").write_text("name,text\na.wav,x\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="header"):
        clotho.load_split(tmp_path, need_audio=False)


def test_submission_problems_are_named(tmp_path: Path):
    split = clotho.load_split(make_layout(tmp_path, 3))
    rows = [(c, [split.files[0], split.files[1], split.files[2]]) for c in split.captions]
    with pytest.raises(DatasetError, match="no row for caption 'clip 2 caption 4'"):
        clotho.score_submission(split, rows[:-1])
    with pytest.raises(DatasetError, match="row 16: caption 'clip 9 caption 0' is not in"):
        clotho.score_submission(split, rows + [("clip 9 caption 0", [split.files[0]])])
    with pytest.raises(DatasetError, match="row 16: caption 'clip 0 caption 0' appears more often"):
        clotho.score_submission(split, rows + [rows[0]])
    with pytest.raises(DatasetError, match="'ghost.wav' is not a clip"):
        clotho.score_submission(split, [(rows[0][0], ["ghost.wav"])] + rows[1:])
    short = tmp_path / "short.csv"
    short.write_text(",".join(clotho.SUBMISSION_HEADER) + "\nsome caption,a.wav,b.wav\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 2: expected 11 fields"):
        clotho.read_submission(short)


def test_repeated_captions_count_once_each_in_file_order(tmp_path: Path):
    make_layout(tmp_path, 2)
    csv_path = tmp_path / "clotho_captions_evaluation.csv"
    text = csv_path.read_text(encoding="utf-8")
    csv_path.write_text(text.replace("clip 1 caption 0", "clip 0 caption 0"), encoding="utf-8")
    split = clotho.load_split(tmp_path)
    a, b = split.files
    assert split.captions[0] == split.captions[5]
    # A submission ranking each query's own clip first; the second 'clip 0 caption 0' row belongs to clip 1.
    rows = [(c, [a, b] if split.caption_file[q] == 0 else [b, a]) for q, c in enumerate(split.captions)]
    assert clotho.score_submission(split, rows).metrics["R1"] == 1.0


def test_cli_errors_are_one_line_without_traceback(tmp_path: Path):
    make_layout(tmp_path, 3)
    (tmp_path / "evaluation" / "clip 01, take.wav").unlink()
    res = runner.invoke(app, ["bench", "clotho", str(tmp_path)])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "clip 01, take.wav" in res.stderr and "Traceback" not in res.output

    res = runner.invoke(app, ["bench", "clotho", str(tmp_path), "--submission", str(tmp_path / "nope.csv"), "--json"])
    assert res.exit_code == 1 and "nope.csv" in res.stderr and len(res.stderr.strip().splitlines()) == 1

    res = runner.invoke(app, ["bench", "clotho", str(tmp_path), "--submission", "x.csv", "--write-submission", "y.csv"])
    assert res.exit_code == 2 and "cannot be combined" in res.stderr


class FakeEncoder:
    """The interface of audiofind.encoder's encoders, with the staircase vectors above."""

    name = "fake"
    sha256 = "ab" * 32

    def __init__(self, n: int) -> None:
        self.audio, self.text = one_hot_audio(n), staircase_text(n)

    def embed_files(self, paths: list[Path], progress=None) -> np.ndarray:
        return self.audio(paths)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        return self.text(texts)


def test_cli_model_run_writes_a_submission_and_caches(
    tmp_path: Path, audiofind_home: Path, monkeypatch: pytest.MonkeyPatch
):
    # audiofind.encoder is someone else's; a stand-in module with its interface drives the command.
    make_layout(tmp_path / "data", 12)
    asked: list[tuple] = []

    def load_encoder(weights: str | None, device: str) -> FakeEncoder:
        asked.append((weights, device))
        return FakeEncoder(12)

    fake = types.ModuleType("audiofind.model.encoder")
    fake.load_encoder = load_encoder  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "audiofind.model.encoder", fake)
    out = tmp_path / "run.csv"
    res = runner.invoke(
        app,
        [
            "bench",
            "clotho",
            str(tmp_path / "data"),
            "-w",
            "tiny",
            "--device",
            "cpu",
            "--write-submission",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    run = json.loads(res.stdout)
    assert asked == [("tiny", "cpu")] and run["source"] == "fake"
    assert run["R1"] == pytest.approx(0.2) and run["n_queries"] == 60
    assert list((audiofind_home / "cache").glob("clotho-evaluation-*.npz"))
    res = runner.invoke(app, ["bench", "clotho", str(tmp_path / "data"), "--submission", str(out), "--json"])
    scored = json.loads(res.stdout)
    assert all(scored[k] == pytest.approx(run[k]) for k in ("R1", "R5", "R10", "mAP10"))


# -- the DCASE 2022 challenge set: queries without ground truth -----------------------------------------------


def make_challenge(root: Path, n_clips: int = 6, truth: bool = False) -> Path:
    """The layout `data download clotho --split dcase2022-eval` leaves: clips, their metadata CSV, the queries.

    Clip 3's metadata name has a colon, which the archive stores as an underscore; clips 0-2 have two queries each.
    """
    make_layout(root, n_clips, split="dcase2022-eval")
    (root / "clotho_captions_dcase2022-eval.csv").unlink()  # the challenge set has no such file
    listed = [f"clip {i:02d}, take.wav" for i in range(n_clips)]
    listed[3] = "clip 03, rain : far.wav"
    os.replace(root / "dcase2022-eval" / "clip 03, take.wav", root / "dcase2022-eval" / "clip 03, rain_far.wav")
    with (root / "retrieval_audio_metadata.csv").open("w", newline="", encoding="latin-1") as f:
        csv.writer(f).writerows([["file_name", "keywords"], *[[n, "caf\xe9"] for n in listed]])
    queries = [(f"clip {i} caption {k}", listed[i]) for i in range(3) for k in range(2)]
    with (root / "retrieval_captions.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(
            [["caption", "file_name"] if truth else ["caption"], *[[c, n] if truth else [c] for c, n in queries]]
        )
    return root


def test_challenge_set_is_ranked_and_scored_only_with_ground_truth(tmp_path: Path):
    split = clotho.load_split(make_challenge(tmp_path / "bare"), "dcase2022-eval")
    assert split.files[3] == "clip 03, rain_far.wav" and len(split.captions) == 6 and split.caption_file is None
    with pytest.raises(DatasetError, match="--write-submission"):
        clotho.evaluate(split, one_hot_audio(6), staircase_text(6))
    scores = clotho.similarities(split, one_hot_audio(6), staircase_text(6))
    assert scores.shape == (6, 6)
    known = clotho.load_split(make_challenge(tmp_path / "known", truth=True), "dcase2022-eval")
    assert known.caption_file == [0, 0, 1, 1, 2, 2]
    result, _ = clotho.evaluate(known, one_hot_audio(6), staircase_text(6))
    assert result.metrics["R1"] == 0.5  # caption k ranks its clip k + 1: half the queries have k = 0


def test_cli_challenge_set_writes_its_submission(tmp_path: Path, audiofind_home: Path, monkeypatch: pytest.MonkeyPatch):
    make_challenge(tmp_path / "data")
    fake = types.ModuleType("audiofind.model.encoder")
    fake.load_encoder = lambda weights, device: FakeEncoder(6)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "audiofind.model.encoder", fake)
    args = ["bench", "clotho", str(tmp_path / "data"), "--split", "dcase2022-eval"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "--write-submission" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    out = tmp_path / "run.csv"
    res = runner.invoke(app, [*args, "--write-submission", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"split": "dcase2022-eval", "source": "fake", "n_clips": 6, "n_queries": 6}
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["caption"] for r in rows] == [f"clip {i} caption {k}" for i in range(3) for k in range(2)]
    assert rows[3]["file_name_1"] == "clip 02, take.wav" and rows[3]["file_name_2"] == "clip 01, take.wav"
