"""`audiofind data download clotho` against a local server: tiny 7z archives and CSVs named by a manifest override."""

import csv
import hashlib
import io
import wave
from pathlib import Path

import numpy as np
import py7zr
import pytest
from typer.testing import CliRunner

from audiofind import paths
from audiofind.cli import app
from audiofind.errors import ChecksumError, DatasetError, DownloadError
from audiofind.eval import clotho
from audiofind.train import data, datasets
from httpkit import Server

runner = CliRunner()
HEADER = ["file_name"] + [f"caption_{i}" for i in range(1, 6)]


def wav_bytes(n: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.full(40 + n, n, dtype=np.int16).tobytes())
    return out.getvalue()


def csv_bytes(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def archive(inside: str, names: list[str]) -> bytes:
    """A 7z of WAV files under the folder the real archives use (development/, ..., test/)."""
    out = io.BytesIO()
    with py7zr.SevenZipFile(out, "w") as z:
        for i, name in enumerate(names):
            z.writestr(wav_bytes(i), f"{inside}/{name}")
    return out.getvalue()


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


CLIPS = {
    "development": ["rain on a roof.wav", "door, creaking.wav", "dog.wav"],
    "validation": ["birds.wav", "sea.wav"],
    "evaluation": ["train.wav", "bell.wav"],
}
SUBSET = {"development": "dev", "validation": "val", "evaluation": "eval"}


def published() -> dict[str, tuple[str, bytes]]:
    """Every file the manifest lists: name -> (subset, bytes)."""
    files = {}
    for split, names in CLIPS.items():
        rows = [HEADER, *[[n] + [f"{n[:-4]} caption {k}" for k in range(5)] for n in names]]
        files[f"clotho_audio_{split}.7z"] = (SUBSET[split], archive(split, names))
        files[f"clotho_captions_{split}.csv"] = (SUBSET[split], csv_bytes(rows))
        files[f"clotho_metadata_{split}.csv"] = (
            SUBSET[split],
            csv_bytes([["file_name", "keywords"], *[[n, "x"] for n in names]]),
        )
    challenge = ["a hum.wav", "Intersection Wet_Metro Pass.wav", "a click.wav"]  # the archive's names, no colon
    files["retrieval_audio.7z"] = ("dcase_t2a_audio", archive("test", challenge))
    listed = ["a hum.wav", "Intersection Wet : Metro Pass.wav", "a click.wav"]
    files["retrieval_audio_metadata.csv"] = ("dcase_t2a_audio", csv_bytes([["file_name"], *[[n] for n in listed]]))
    files["retrieval_captions.csv"] = (
        "dcase_t2a_captions",
        csv_bytes([["caption"], ["a low hum"], ["cars pass in the wet"]]),
    )
    return files


def publish(s: Server, manifest: Path, files: dict[str, tuple[str, bytes]]) -> None:
    """Serve the files and write the manifest naming them with their md5 sums."""
    lines = ["subset\tfile\turl\tmd5"]
    for name, (subset, body) in files.items():
        s.files[name] = body
        lines.append(f"{subset}\t{name}\t{s.url}/{name}\t{md5(body)}")
    lines.append(f"dcase_aac_test\tclotho_audio_test.7z\t{s.url}/clotho_audio_test.7z\t{'0' * 32}")  # never fetched
    manifest.write_text("\n".join(lines) + "\n")


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The local server with every file, and a manifest naming them; tests may change server.files afterwards."""
    s = Server()
    s.published = published()  # type: ignore[attr-defined]
    s.manifest = tmp_path / "files.tsv"  # type: ignore[attr-defined]
    publish(s, s.manifest, s.published)  # type: ignore[attr-defined]
    monkeypatch.setenv("AUDIOFIND_DATA_MANIFEST", str(s.manifest))  # type: ignore[attr-defined]
    yield s
    s.close()


def cli(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["data", "download", "clotho", *args])


def test_all_splits_land_in_the_layout_bench_and_finetune_read(server: Server):
    done = cli()
    assert done.exit_code == 0, done.output
    root = paths.data_dir() / "clotho"  # the default folder, under AUDIOFIND_HOME here
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [f"clotho_{kind}_{s}.csv" for s in CLIPS for kind in ("captions", "metadata")] + list(CLIPS)
    )
    for split, names in CLIPS.items():
        assert sorted(p.name for p in (root / split).glob("*.wav")) == sorted(names)
        assert clotho.load_split(root, split).files == names  # what bench clotho reads
        assert f"{split}: {len(names)} clips, {5 * len(names)} captions" in done.stdout
    assert (root / "development" / "dog.wav").read_bytes() == wav_bytes(2)
    train, val = data.load_sources(root, None, None)  # what finetune --clotho reads
    assert len(train) == 3 and len(val) == 2
    assert "clotho_audio_test.7z" not in str(server.requests) and len(server.requests) == 9


def test_second_run_checks_and_skips(server: Server, tmp_path: Path):
    root = tmp_path / "data"
    first, _ = datasets.download_clotho(root, "evaluation")
    assert server.requests == [None, None, None]
    steps: list[str] = []
    again, reports = datasets.download_clotho(root, "evaluation", lambda what, done, total: steps.append(what))
    assert again == first and server.requests == [None, None, None]  # nothing fetched again
    assert reports[0].fetched == () and not reports[0].unpacked and reports[0].clips == 2
    assert set(steps) == {"Checking clotho_captions_evaluation.csv", "Checking clotho_metadata_evaluation.csv"}
    assert "complete, checked" in cli("--to", str(root), "--split", "evaluation").stdout
    # A clip deleted afterwards is noticed: the archive is fetched and unpacked again.
    (root / "evaluation" / "bell.wav").unlink()
    _, reports = datasets.download_clotho(root, "evaluation")
    assert reports[0].fetched == ("clotho_audio_evaluation.7z",) and (root / "evaluation" / "bell.wav").is_file()


def test_corrupted_file_is_deleted_and_named(server: Server, tmp_path: Path):
    good = server.files["clotho_captions_validation.csv"]
    server.files["clotho_captions_validation.csv"] = good.replace(b"birds", b"bards")
    done = cli("--to", str(tmp_path), "--split", "validation")
    assert done.exit_code == 1 and len(done.stderr.strip().splitlines()) == 1
    assert md5(good) in done.stderr and "deleted" in done.stderr and "clotho_captions_validation.csv" in done.stderr
    assert not list(tmp_path.glob("clotho_captions_validation.csv*"))
    with pytest.raises(ChecksumError):
        datasets.download_clotho(tmp_path, "validation")
    # A file damaged on disk after a good run is replaced.
    server.files["clotho_captions_validation.csv"] = good
    datasets.download_clotho(tmp_path, "validation")
    (tmp_path / "clotho_captions_validation.csv").write_bytes(b"damaged")
    _, reports = datasets.download_clotho(tmp_path, "validation")
    assert reports[0].fetched == ("clotho_captions_validation.csv",)
    assert (tmp_path / "clotho_captions_validation.csv").read_bytes() == good


def test_interrupted_download_resumes_with_range(server: Server, tmp_path: Path):
    server.cut = True  # the connection drops half-way through the first file, the captions CSV
    with pytest.raises(DownloadError, match="resume"):
        datasets.download_clotho(tmp_path, "development")
    part = tmp_path / "clotho_captions_development.csv.part"
    half = len(server.files["clotho_captions_development.csv"]) // 2
    assert part.stat().st_size == half
    server.cut = False
    _, reports = datasets.download_clotho(tmp_path, "development")
    assert server.requests == [None, f"bytes={half}-", None, None]  # the rest of it, then the other two files
    assert reports[0].clips == 3 and not part.exists()
    assert clotho.load_split(tmp_path, "development").captions[0] == "rain on a roof caption 0"


def test_archive_missing_a_listed_clip_is_named(server: Server, tmp_path: Path):
    server.published["clotho_audio_evaluation.7z"] = ("eval", archive("evaluation", ["train.wav"]))
    publish(server, server.manifest, server.published)
    done = cli("--to", str(tmp_path), "--split", "evaluation")
    assert done.exit_code == 1 and "'bell.wav'" in done.stderr and "clotho_audio_evaluation.7z" in done.stderr
    assert not (tmp_path / "evaluation" / datasets.MARKER).exists()
    with pytest.raises(DatasetError, match="missing"):
        clotho.load_split(tmp_path, "evaluation")


def test_challenge_set_for_bench_clotho(server: Server, tmp_path: Path):
    _, reports = datasets.download_clotho(tmp_path, "dcase2022-eval")
    assert (reports[0].clips, reports[0].captions) == (3, 2)
    assert sorted(p.name for p in (tmp_path / "dcase2022-eval").glob("*.wav")) == [
        "Intersection Wet_Metro Pass.wav",
        "a click.wav",
        "a hum.wav",
    ]
    split = clotho.load_split(tmp_path, "dcase2022-eval")
    assert split.captions == ["a low hum", "cars pass in the wet"] and split.caption_file is None


def test_bad_manifest_and_split_are_one_line(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bad = tmp_path / "bad.tsv"
    bad.write_text("subset\tfile\turl\tmd5\ndev\t../escape.csv\thttp://127.0.0.1/x\t" + "0" * 32 + "\n")
    monkeypatch.setenv("AUDIOFIND_DATA_MANIFEST", str(bad))
    done = cli("--to", str(tmp_path / "d"))
    assert done.exit_code == 1 and "not a plain file name" in done.stderr and "Traceback" not in done.output
    monkeypatch.setenv("AUDIOFIND_DATA_MANIFEST", str(tmp_path / "absent.tsv"))
    assert "absent.tsv" in cli().stderr
    assert cli("--split", "test").exit_code == 2


def test_help_shows_the_splits_as_they_are_typed():
    done = runner.invoke(app, ["data", "download", "clotho", "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0 and "Split." not in done.stdout
    assert "development|validation|evaluation|all|dcase2022-eval" in done.stdout


@pytest.mark.parametrize(
    ("args", "manifest", "code"),
    [
        (["--split", "test"], None, 2),  # not a split
        (["--split"], None, 2),  # no value
        (["--bogus"], None, 2),
        ([], "absent.tsv", 1),  # the library's DatasetError
        (["--split", "validation"], "damaged", 1),  # a ChecksumError in the middle of the download
    ],
)
def test_errors_are_one_line_that_begins_like_every_other_command(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], manifest: str | None, code: int
):
    if manifest == "damaged":
        server.files["clotho_captions_validation.csv"] = b"not what the manifest says"
    elif manifest:
        monkeypatch.setenv("AUDIOFIND_DATA_MANIFEST", str(tmp_path / manifest))
    done = cli("--to", str(tmp_path / "clotho"), *args)
    lines = done.stderr.strip().splitlines()
    assert done.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), done.output
    assert "Traceback" not in done.output
