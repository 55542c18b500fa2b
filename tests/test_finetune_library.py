"""`finetune --library`: captions from the indexed files' own names and tags, a seeded held-out tenth scored
before and after, thin names left out and counted. TINY weights on a generated library, seconds on a CPU."""

import json
from pathlib import Path

import audiogen
import mutagen.flac
import pytest
from modelkit import register_tiny
from typer.testing import CliRunner

from audiofind.audio import names
from audiofind.cli import app
from audiofind.errors import DatasetError
from audiofind.train import data

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
# Six sounds a tiny model can tell apart, each named the way sound designers name files (UCS-like ids, CamelCase).
KINDS = [
    ("Electronic/Beeps", "BEEPHigh_Pitched Tone", lambda k: audiogen.sine(2500 + 300 * k, 1.0)),
    ("Machines", "HUMMotor_Low Drone", lambda k: audiogen.sine(90 + 15 * k, 1.0)),
    ("Weather/Wind", "NoiseWhite_Hiss Static", lambda k: audiogen.noise(1.0, seed=k)),
    ("Sirens", "SweepRising_Siren Glide", lambda k: audiogen.chirp(200, 4000 + 500 * k, 1.0)),
    ("Electronic/Buzzers", "BuzzHarsh_Square Buzzer", lambda k: audiogen.square(180 + 20 * k, 1.0)),
    ("Rooms", "AmbQuiet_Silent Room Tone", lambda k: audiogen.sine(1000, 1.0, amp=0.001 * (k + 1))),
]
THIN = ["Take_01.wav", "Kick808.wav", "tk3_v2_final.wav"]  # at the top: a folder's name would add a real word


def make_library(root: Path) -> Path:
    """30 descriptively named files, one file whose only description is its title tag, three thin names and a
    well-named file that is not audio (the index records it as failed)."""
    for folder, stem, make in KINDS:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for k in range(5):
            audiogen.write_audio(root / folder / f"{stem}_{k + 1:02d}.wav", make(k))
    tagged = audiogen.write_audio(root / "Machines" / "0042.flac", audiogen.sine(110, 1.0))
    tags = mutagen.flac.FLAC(tagged)
    tags["title"] = "Low motor hum"
    tags.save()
    for thin in THIN:
        audiogen.write_audio(root / thin, audiogen.noise(0.5, seed=7))
    audiogen.write_not_audio(root / "Weather" / "Rain_Heavy Storm.wav")
    return root


@pytest.fixture
def indexed(tmp_path: Path) -> tuple[Path, Path, str]:
    """(library, index file, model name): the library indexed with TINY weights."""
    lib, db = make_library(tmp_path / "sounds"), tmp_path / "index.db"
    name = register_tiny()
    done = runner.invoke(app, ["index", str(lib), "-w", name, "--db", str(db)])
    assert done.exit_code == 0, done.output
    return lib, db, name


def test_library_captions_hold_out_a_seeded_tenth(indexed: tuple[Path, Path, str]) -> None:
    lib, db, _ = indexed
    clips = data.read_library(db)
    captions = {c.path.relative_to(lib).as_posix(): c.captions for c in clips.clips}
    assert captions["Electronic/Beeps/BEEPHigh_Pitched Tone_03.wav"] == ("beep high pitched tone 03 beeps electronic",)
    assert captions["Machines/0042.flac"] == ("0042 machines low motor hum",)  # the title tag makes it usable
    assert len(captions) == 31 and "Weather/Rain_Heavy Storm.wav" not in captions  # failed files are not audio
    assert sorted(Path(p).relative_to(lib).as_posix() for p in clips.thin) == sorted(THIN)
    train, val = data.load_sources(None, None, None, library=True, db=db, seed=3)
    assert (len(train), len(val)) == (28, 3) and train.thin == clips.thin
    assert not {c.path for c in val.clips} & {c.path for c in train.clips}
    again = data.load_sources(None, None, None, library=True, db=db, seed=3)[1]
    other = data.load_sources(None, None, None, library=True, db=db, seed=4)[1]
    assert again == val and other != val  # the held-out files follow the seed, and only the seed


def test_finetune_library_scores_held_out_files_before_and_after(
    indexed: tuple[Path, Path, str], tmp_path: Path
) -> None:
    _, db, name = indexed
    args = [
        "finetune",
        "--library",
        "--db",
        str(db),
        "--init",
        name,
        "--name",
        "mine",
        "--epochs",
        "3",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "1",
        "--crop-seconds",
        "0.3",
        "--workers",
        "0",
        "--average-top",
        "2",
        "--out",
        str(tmp_path / "run"),
    ]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    before = next(line for line in lines if line.strip().startswith("before"))
    after = next(line for line in lines if line.strip().startswith("after"))
    assert all(m in before and m in after for m in ("R@1", "R@5", "R@10", "mAP@10"))
    assert "Left out 3 files" in done.stderr
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["data"]["validation_clips"] == 3 and card["data"]["left_out_thin_names"] == 3
    scores = card["validation"]
    assert scores["before"]["n_queries"] == scores["final"]["n_queries"] == 3
    assert f"mAP@10 {scores['before']['mAP10']:.4f}" in before and f"mAP@10 {scores['final']['mAP10']:.4f}" in after
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["kind"] == "baseline" and log[0]["step"] == 0
    assert runner.invoke(app, ["embed", "-w", "mine", "--text", "a low hum"]).exit_code == 0


def test_a_library_of_thin_names_is_refused(tmp_path: Path) -> None:
    lib = tmp_path / "thin"
    lib.mkdir()
    for i, thin in enumerate(["Take_01.wav", "0042.wav", "v2_final.wav"]):
        audiogen.write_audio(lib / thin, audiogen.sine(200 * (i + 1), 0.3))
    name, db = register_tiny(), tmp_path / "index.db"
    assert runner.invoke(app, ["index", str(lib), "-w", name, "--db", str(db)]).exit_code == 0
    with pytest.raises(DatasetError, match="fewer than 2 real words"):
        data.read_library(db)
    done = runner.invoke(app, ["finetune", "--library", "--db", str(tmp_path / "none.db"), "--init", name])
    assert done.exit_code == 1 and "No index" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert names.MIN_WORDS == 2
