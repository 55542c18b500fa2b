"""A newcomer is never stuck: the model chosen without --weights, messages that say what to do next, and weights
remove taking the training run along. Every test goes through the CLI, as a user would."""

import json
import shlex
import socket
from pathlib import Path

import audiogen
import pytest
import torch
from modelkit import register_tiny, synthetic_state_dict
from typer.testing import CliRunner

from audiofind import paths
from audiofind.cli import app
from audiofind.model import weights
from audiofind.model.config import TINY
from audiofind.train import finetune as train

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def one_line_error(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def sounds(tmp_path: Path) -> Path:
    folder = tmp_path / "sounds"
    folder.mkdir()
    audiogen.write_audio(folder / "hum.wav", audiogen.sine(110, 0.5))
    return folder


def indexed_model(result) -> str:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.splitlines()[-1])["model"]


def quick_finetune(clotho: Path, *extra: str) -> list[str]:
    """A seconds-long fine-tuning command on TINY weights (pass --init or set AUDIOFIND_WEIGHTS)."""
    return [
        "finetune",
        "--clotho",
        str(clotho),
        "--epochs",
        "1",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "1",
        "--crop-seconds",
        "0.3",
        "--workers",
        "0",
        "--average-top",
        "1",
        *extra,
    ]


# ---------------------------------------------------------------- which model, without --weights


def test_an_imported_checkpoint_is_used_without_weights(tmp_path: Path, sounds: Path) -> None:
    # The path: the published model is not downloaded, one checkpoint is imported, then `index` just works.
    elsewhere = weights.save_model(*_tiny("tiny-src"))
    moved = tmp_path / "my-model.safetensors"
    elsewhere.rename(moved)
    imported = run("weights", "import", str(moved))
    assert imported.exit_code == 0, imported.output
    assert imported.stdout.splitlines()[-1] == "Commands use it when no --weights is given: audiofind index FOLDER"
    db = str(tmp_path / "index.db")
    assert indexed_model(run("index", str(sounds), "--db", db, "--json")) == "my-model"


def test_several_models_and_no_default_name_them_and_the_ways_to_choose(tmp_path: Path, sounds: Path) -> None:
    register_tiny("first")
    second = tmp_path / "second.safetensors"
    weights.save_model(*_tiny("second-src")).rename(second)
    imported = run("weights", "import", str(second))
    assert imported.stdout.splitlines()[-1] == (
        "Use it with: audiofind index FOLDER --weights second (or set AUDIOFIND_WEIGHTS=second for every command)"
    )
    line = one_line_error(run("index", str(sounds), "--db", str(tmp_path / "a.db")))
    assert "(first, second)" in line and "--weights NAME" in line and "AUDIOFIND_WEIGHTS" in line
    assert (
        indexed_model(
            run("index", str(sounds), "--db", str(tmp_path / "b.db"), "--json", env={"AUDIOFIND_WEIGHTS": "second"})
        )
        == "second"
    )


def test_weights_download_offline_names_weights_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nothing listens on: the connection is refused, as with no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = {"name": "pub", "file": "Published.pt", "url": f"http://127.0.0.1:{port}/Published.pt", "sha256": "0" * 64}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"default": "pub", "models": [entry]}))
    monkeypatch.setenv("AUDIOFIND_MANIFEST", str(manifest))
    line = one_line_error(run("weights", "download"))
    assert "Could not download 'pub'" in line
    assert line.endswith("If you already have Published.pt, use it with: audiofind weights import PATH")


def test_finetune_init_honours_audiofind_weights(tmp_path: Path, clotho_dir: Path) -> None:
    register_tiny("tiny")  # the only model: without the variable it would be used
    line = one_line_error(
        run(*quick_finetune(clotho_dir, "--out", str(tmp_path / "run")), env={"AUDIOFIND_WEIGHTS": "not-a-model"})
    )
    assert "Unknown model 'not-a-model'" in line


# ---------------------------------------------------------------- one voice


def test_an_empty_caption_is_called_that(tmp_path: Path) -> None:
    audiogen.write_audio(tmp_path / "x.wav", audiogen.sine(440, 0.3))
    (tmp_path / "pairs.csv").write_text("path,caption\nx.wav,\n")
    line = one_line_error(run("bench", "captions", str(tmp_path / "pairs.csv")))
    assert line.endswith("pairs.csv line 2: the caption of x.wav is empty.")


def test_a_text_file_given_to_weights_import_is_called_a_text_file(tmp_path: Path) -> None:
    notes = tmp_path / "README"
    notes.write_text("README\nmore\n")  # torch.load fails on this with an IndexError
    line = one_line_error(run("weights", "import", str(notes)))
    assert line == f"error: {notes} is a text file, not a torch checkpoint (.pt) or a safetensors file."


def test_ctrl_c_in_finetune_prints_the_resume_command_and_exits_130(
    tmp_path: Path, clotho_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_tiny("tiny")
    real = train.lr_at

    def interrupt_at_step_two(step: int, cfg: train.TrainConfig) -> float:
        if step == 2:
            raise KeyboardInterrupt
        return real(step, cfg)

    monkeypatch.setattr(train, "lr_at", interrupt_at_step_two)
    args = quick_finetune(clotho_dir, "--name", "mine", "--out", str(tmp_path / "my run"), "--checkpoint-every", "1")
    stopped = run(*args)
    assert stopped.exit_code == 130, stopped.output
    hint = stopped.stderr.strip().splitlines()[-1]
    prefix = "Interrupted; continue from the last checkpoint with: "
    assert hint == prefix + f"audiofind finetune --out {shlex.quote(str(tmp_path / 'my run'))} --resume"
    monkeypatch.setattr(train, "lr_at", real)
    resumed = run(*shlex.split(hint.removeprefix(prefix))[1:], "--workers", "0", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["finished"]


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(
    tmp_path: Path, clotho_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_tiny("tiny")

    def interrupt(step: int, cfg: train.TrainConfig) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "lr_at", interrupt)
    stopped = run(*quick_finetune(clotho_dir, "--out", str(tmp_path / "run")))
    assert stopped.exit_code == 130, stopped.output
    assert stopped.stderr.strip().splitlines()[-1] == (
        "Interrupted before the first checkpoint, so there is nothing to resume; run the same command to start again."
    )


@pytest.mark.parametrize(
    ("flag", "value", "precision", "matmuls"),
    [
        ("--precision", "tf32", "tf32", "tf32"),
        ("--precision", "fp32", "fp32", "ieee"),
        ("--dtype", "float32", "fp32", "ieee"),  # the old name and its old values still work
        ("--dtype", "bfloat16", "bf16", None),
    ],
)
def test_finetune_precision(
    tmp_path: Path,
    clotho_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    flag: str,
    value: str,
    precision: str,
    matmuls: str | None,
) -> None:
    register_tiny("tiny")
    before = torch.backends.cuda.matmul.fp32_precision
    seen, real = [], train.lr_at

    def spy(step: int, cfg: train.TrainConfig) -> float:
        seen.append(torch.backends.cuda.matmul.fp32_precision)  # as the step computes
        return real(step, cfg)

    monkeypatch.setattr(train, "lr_at", spy)
    out = tmp_path / "run"
    done = run(*quick_finetune(clotho_dir, "--out", str(out), "--max-steps", "1", flag, value))
    assert done.exit_code == 0, done.output
    assert torch.load(out / paths.RUN_CHECKPOINT, weights_only=True)["train_config"]["precision"] == precision
    assert seen == [matmuls or before] and torch.backends.cuda.matmul.fp32_precision == before


def test_finetune_refuses_an_unknown_precision(clotho_dir: Path) -> None:
    assert "--precision auto, fp32, tf32 or bf16" in one_line_error(run(*quick_finetune(clotho_dir, "--dtype", "fp8")))
    assert "use auto, fp32, tf32 or bf16" in one_line_error(run(*quick_finetune(clotho_dir, "--precision", "fp8")))


# ---------------------------------------------------------------- weights remove and training runs


def test_weights_remove_takes_the_training_run_along(tmp_path: Path, clotho_dir: Path) -> None:
    register_tiny("tiny")
    out = tmp_path / "my-runs"
    out.mkdir()
    (out / "notes.txt").write_text("mine, not the run's")
    done = run(*quick_finetune(clotho_dir, "--init", "tiny", "--name", "tuned", "--out", str(out)))
    assert done.exit_code == 0, done.output
    assert (out / paths.RUN_CHECKPOINT).is_file() and (out / paths.RUN_SNAPSHOTS).is_dir()
    removed = run("weights", "remove", "tuned")
    assert removed.exit_code == 0, removed.output
    assert removed.stdout.splitlines()[0] == "Removed tuned."
    assert removed.stdout.splitlines()[1].startswith(f"Removed its training run {out} (")
    assert not (paths.weights_dir() / "tuned.safetensors").exists()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # what the user put there stays


def test_weights_remove_keep_runs_keeps_it_and_says_so() -> None:
    register_tiny("kept")
    folder = paths.run_dir("kept")
    (folder / paths.RUN_SNAPSHOTS).mkdir(parents=True)
    (folder / paths.RUN_CHECKPOINT).write_bytes(b"x" * 2_000_000)
    kept = run("weights", "remove", "kept", "--keep-runs")
    assert kept.exit_code == 0, kept.output
    assert kept.stdout.splitlines() == [
        "Removed kept.",
        f"Kept its training run {folder} (2 MB), as --keep-runs asked.",
    ]
    assert (folder / paths.RUN_CHECKPOINT).is_file()
    # Asked again without --keep-runs, the run left behind goes too.
    again = run("weights", "remove", "kept")
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines() == ["No model 'kept' is installed.", f"Removed its training run {folder} (2 MB)."]
    assert not folder.exists()


def _tiny(name: str) -> tuple:
    """Arguments of weights.save_model for TINY recipe weights."""
    return synthetic_state_dict(TINY), name, TINY.to_dict(), {"description": "TINY weights made for this test."}
