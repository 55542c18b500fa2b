"""Fine-tuning: data sources, the loop (learning, exact resume, averaging, torchrun) and the CLI; the loss: test_loss.py.

Every run uses the TINY config on a made-up Clotho-layout dataset of six distinguishable sounds, 1 s clips and
0.3 s crops, so a few dozen steps take seconds on a CPU.
"""

import inspect
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import audiogen
import numpy as np
import pytest
import torch
from modelkit import synthetic_model, synthetic_state_dict
from safetensors.torch import load_file
from typer.testing import CliRunner

import killkit
from audiofind.cli import app
from audiofind.errors import DatasetError, UsageError
from audiofind.model import weights
from audiofind.model.config import TINY, AudioCLIPConfig
from audiofind.train import batches, data, runfolder
from audiofind.train.config import TrainConfig
from audiofind.train.finetune import finetune, lr_at
from audiofind.train.loss import fbsp_penalty
from audiofind.train.runfolder import average_state_dicts, best_epochs, trim_log
from audiofind.train.step import train_throughput
from trainkit import CHANCE_MAP10, quick, register_init

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture
def init(audiofind_home: Path) -> str:
    return register_init()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, clotho_dir: Path):
    """One 8-epoch run shared by the tests that look at its outcome: (result, AUDIOFIND_HOME, metrics log)."""
    home = tmp_path_factory.mktemp("trained_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIOFIND_HOME", str(home))
        register_init()
        cfg = quick(home, clotho_dir, epochs=8, average_top=3)
        result = finetune(cfg)
    records = [json.loads(line) for line in (home / "run" / "metrics.jsonl").read_text().splitlines()]
    return result, home, records


# ---------------------------------------------------------------- the loop


def test_training_lowers_the_loss_and_beats_chance(trained) -> None:
    result, _, records = trained
    steps = [r["loss"] for r in records if r["kind"] == "step"]
    assert len(steps) == result.total_steps == 8 * 3
    assert np.mean(steps[-6:]) < np.mean(steps[:6]) - 0.5
    assert result.history[0]["mAP10"] < result.final["mAP10"]
    assert result.final["mAP10"] > CHANCE_MAP10 + 0.15, result.history


def test_final_model_is_the_average_of_the_best_epochs(trained) -> None:
    result, home, records = trained
    epochs = [r for r in records if r["kind"] == "epoch"]
    ranked = sorted(epochs, key=lambda r: (-r["mAP10"], r["epoch"]))
    assert result.best_epochs == [r["epoch"] for r in ranked[:3]]
    snapshots = sorted((home / "run" / "best").glob("*.safetensors"))
    assert [p.name for p in snapshots] == [f"epoch-{e:03d}.safetensors" for e in sorted(result.best_epochs)]
    expected = average_state_dicts([load_file(p) for p in snapshots])
    saved = load_file(result.path)
    assert saved.keys() <= expected.keys() and "logit_scale_at" in saved
    for key, value in saved.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    card = json.loads((home / "run" / "card.json").read_text())
    assert card["validation"]["averaged_epochs"] == result.best_epochs
    assert card["recipe"]["label_smoothing"] == 0.1 and card["base"]["name"] == "tiny-init"
    assert records[-1]["kind"] == "final" and records[-1]["mAP10"] == result.final["mAP10"]


def test_fine_tuned_model_is_registered_and_loads(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    from audiofind.model.encoder import load_encoder

    result, home, _ = trained
    monkeypatch.setenv("AUDIOFIND_HOME", str(home))
    info = {m.name: m for m in weights.available_models()}["tuned"]
    assert info.source == "finetuned" and info.path == result.path
    enc = load_encoder("tuned", "cpu")
    assert enc.config == TINY
    assert enc.embed_text(["a low hum"]).shape == (1, TINY.embed_dim)
    assert weights.load_card("tuned")["validation"]["final"]["mAP10"] == result.final["mAP10"]


def test_resume_continues_exactly(tmp_path: Path, clotho_dir: Path, init: str) -> None:
    whole = finetune(quick(tmp_path / "a", clotho_dir, name="whole"))
    stopped = finetune(quick(tmp_path / "b", clotho_dir, name="split", max_steps=4, workers=1))  # mid-epoch 2
    assert not stopped.finished and stopped.step == 4 and stopped.path is None
    ckpt = torch.load(tmp_path / "b" / "run" / "checkpoint.pt", weights_only=True)  # tensors and primitives only
    assert ckpt["step"] == 4
    resumed = finetune(quick(tmp_path / "b", clotho_dir, name="split", resume=True, epochs=99))  # recipe from ckpt
    assert resumed.finished and resumed.step == whole.step == 6
    assert resumed.history == whole.history
    a, b = load_file(whole.path), load_file(resumed.path)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_second_run_needs_resume_and_resume_needs_a_run(tmp_path: Path, clotho_dir: Path, init: str) -> None:
    finetune(quick(tmp_path, clotho_dir, max_steps=1))
    with pytest.raises(UsageError, match="--resume"):
        finetune(quick(tmp_path, clotho_dir, max_steps=1))
    with pytest.raises(UsageError, match="Nothing to resume"):
        finetune(quick(tmp_path, clotho_dir, out=tmp_path / "elsewhere", resume=True))
    with pytest.raises(UsageError, match="already exists"):
        finetune(quick(tmp_path, clotho_dir, name="tiny-init", out=tmp_path / "third"))


def test_each_step_trains_on_the_smoothed_loss_plus_the_weighted_regulariser(
    tmp_path: Path, clotho_dir: Path, init: str
) -> None:
    """The loop trains on spec (d) with the recipe's smoothing and regulariser weight, not only the loss function.

    Each run logs its first step's loss on the same batch and dropout draws: it moves with label_smoothing, and by
    exactly fbsp_weight times the init's filter-norm penalty with fbsp_weight.
    """

    def first_loss(**changes) -> float:
        out = tmp_path / "-".join(f"{k}={v}" for k, v in changes.items())
        finetune(quick(out, clotho_dir, max_steps=1, **changes))
        records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
        return next(r for r in records if r["kind"] == "step")["loss"]  # the baseline's scores come first

    both = first_loss(label_smoothing=0.25, fbsp_weight=3.0)
    penalty = fbsp_penalty(*synthetic_model(TINY).audio.fbsp.filters()).item()
    assert penalty > 0.01
    assert both - first_loss(label_smoothing=0.25, fbsp_weight=0.0) == pytest.approx(3.0 * penalty, rel=1e-4)
    assert abs(both - first_loss(label_smoothing=0.0, fbsp_weight=3.0)) > 0.01


@pytest.mark.slow
def test_one_step_at_full_size(tmp_path: Path, clotho_dir: Path, audiofind_home: Path) -> None:
    full = AudioCLIPConfig()
    weights.save_model(synthetic_state_dict(full), "full-init", full.to_dict(), {"description": "recipe weights"})
    before = weights.read_state_dict(weights.resolve("full-init"))
    result = finetune(quick(tmp_path, clotho_dir, init="full-init", batch=2, crop_seconds=1.0, lr=1e-5, max_steps=1))
    assert result.step == 1 and result.model.cfg == full
    # logit_scale_at starts at ln 100, where the [1, 100] clamp passes no gradient (as in the reference)
    moved = {
        k: not torch.equal(v, before[k])
        for k, v in result.model.named_parameters()
        if v.requires_grad and k != "logit_scale_at"
    }
    assert len(moved) > 300
    assert all(moved.values()), [k for k, m in moved.items() if not m][:5]


def test_two_processes_under_torchrun_end_with_the_same_weights(tmp_path: Path, clotho_dir: Path, init: str) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(
        inspect.cleandoc("""
        import os, sys
        from pathlib import Path
        from safetensors.torch import save_file
        from audiofind.train.config import TrainConfig
        from audiofind.train.finetune import finetune
        out = Path(sys.argv[2])
        cfg = TrainConfig(name="ddp", clotho=Path(sys.argv[1]), init="tiny-init", out=out, batch=4, lr=3e-3,
                          warmup_steps=1, crop_seconds=0.3, workers=0, max_steps=2)
        result = finetune(cfg)
        assert result.step == 2
        state = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
        save_file(state, out / f"rank{os.environ['RANK']}.safetensors")
    """)
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(clotho_dir),
        str(tmp_path / "run"),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    rank0, rank1 = (load_file(tmp_path / "run" / f"rank{r}.safetensors") for r in (0, 1))
    init_sd = synthetic_state_dict(TINY)
    assert not torch.equal(rank0["text_projection"], init_sd["text_projection"])  # it trained
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == 2  # both ranks' dropout generators, for an exact resume


# ---------------------------------------------------------------- killed at any moment (issue 20)


def test_a_run_killed_at_any_file_operation_resumes_to_the_same_end(
    tmp_path: Path, clotho_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL at every file operation of the epochs' ends and of the run's end (killkit.py), then --resume.

    --resume continues from the last epoch whose checkpoint is whole; a run killed before its first checkpoint is
    whole has nothing to resume and starts again. Either way it ends with the files, weights, metrics log and card
    of a run that was never killed.
    """

    def home(root: Path) -> Path:
        monkeypatch.setenv("AUDIOFIND_HOME", str(root / "home"))
        register_init()
        return root

    trace = tmp_path / "operations.txt"
    assert killkit.run(home(tmp_path / "whole"), clotho_dir, trace=trace) == 0
    operations = trace.read_text().splitlines()
    assert [op for op in operations if not op.endswith(" step")] == [
        "write run/metrics.jsonl",
        "write run/metrics.jsonl baseline",
        # epoch 1's end: the checkpoint first, since the snapshot and the log line can be made again from it
        "replace run/checkpoint.pt",
        "replace run/best/epoch-001.safetensors",
        "write run/metrics.jsonl epoch",
        # epoch 2's end: epoch 2 scores best, so its snapshot replaces epoch 1's
        "replace run/checkpoint.pt",
        "replace run/best/epoch-002.safetensors",
        "unlink run/best/epoch-001.safetensors",
        "write run/metrics.jsonl epoch",
        # the run's end: the average of the best epochs registered, its card, the last log line
        "replace home/weights/tuned.safetensors",
        "write run/card.json",
        "write run/metrics.jsonl final",
    ]
    expected = killkit.outcome(tmp_path / "whole")
    first = operations.index("replace run/checkpoint.pt")
    points = [
        (n, way)
        for n, op in enumerate(operations, 1)
        if n > first and " step" not in op
        for way in killkit.ways_to_kill(op)
    ]
    assert len(points) == 15
    for n, way in points:
        root = home(tmp_path / f"{n}-{way}")
        assert killkit.run(root, clotho_dir, (n, way)) == -signal.SIGKILL, (n, way)
        whole = operations[: n - 1].count("replace run/checkpoint.pt")  # epochs whose checkpoint was renamed in
        assert whole or not list((root / "run" / "best").glob("*.safetensors")), "a snapshot without its checkpoint"
        resume = ["finetune", "--out", str(root / "run"), "--resume", "--workers", "0", "--json"]
        if whole:
            assert torch.load(root / "run" / "checkpoint.pt", weights_only=True)["step"] == 3 * whole
            done = runner.invoke(app, resume)
        else:
            refused = runner.invoke(app, resume)
            assert refused.exit_code == 2 and "Nothing to resume" in refused.stderr, refused.output
            done = runner.invoke(app, killkit.command(root, clotho_dir))
        assert done.exit_code == 0 and json.loads(done.stdout)["finished"], (n, way, done.output)
        assert killkit.outcome(root) == expected, (n, way, operations[n - 1])


# ---------------------------------------------------------------- small pure pieces


def test_learning_rate_warms_up_linearly_then_holds() -> None:
    cfg = TrainConfig(lr=1e-5, warmup_steps=4)
    assert [lr_at(s, cfg) for s in range(6)] == pytest.approx([2.5e-6, 5e-6, 7.5e-6, 1e-5, 1e-5, 1e-5])


def test_resuming_cuts_the_log_back_to_the_checkpoint(tmp_path: Path) -> None:
    records = [
        {"kind": "baseline", "step": 0},
        *({"kind": "step", "step": s} for s in (1, 2, 3)),
        {"kind": "epoch", "epoch": 1, "step": 3},
        {"kind": "step", "step": 4},
    ]
    log = tmp_path / "metrics.jsonl"
    whole = "".join(json.dumps(r) + "\n" for r in records)
    log.write_text(whole + '{"kind": "st')  # a line cut short
    assert trim_log(log, 3, epoch=1) and log.read_text() == whole[: whole.index('{"kind": "step", "step": 4}')]
    log.write_text(whole + json.dumps({"kind": "final", "step": 4}) + "\n")
    assert not trim_log(log, 4, epoch=2) and log.read_text() == whole  # the run's end writes its line again
    log.write_text(whole[: whole.index('{"kind": "epoch"')] + '{"kind": "epoch", "epoch": 1, "step": 3}')
    assert not trim_log(log, 3, epoch=1)  # the epoch's line was cut short: start() writes it again


def test_resuming_mends_what_a_kill_left_after_the_checkpoint(tmp_path: Path) -> None:
    """Killed after epoch 2's checkpoint: no snapshot or log line for it yet, temporaries half written."""
    out = tmp_path / "run"
    (out / "best").mkdir(parents=True)
    for tmp in (out / "checkpoint.pt.tmp", out / "best" / "epoch-002.tmp"):
        tmp.write_bytes(b"half a file")
    runfolder.save_snapshot(out, 1, {"w": torch.zeros(3)})
    history = [{"epoch": 1, "step": 3, "mAP10": 0.2}, {"epoch": 2, "step": 6, "mAP10": 0.5}]
    records = [{"kind": "step", "step": s} for s in (1, 2, 3)] + [{"kind": "epoch", **history[0]}]
    records += [{"kind": "step", "step": s} for s in (4, 5, 6)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    runfolder.start(out, {"step": 6, "history": history, "model": {"w": torch.arange(3.0)}}, average_top=1)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "best",
        "best/epoch-002.safetensors",
        "metrics.jsonl",
    ]  # epoch 2 is rebuilt, epoch 1 no longer the best
    assert torch.equal(load_file(out / "best" / "epoch-002.safetensors")["w"], torch.arange(3.0))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records + [{"kind": "epoch", **history[1]}]
    runfolder.start(out, None, average_top=1)  # a fresh run keeps nothing of an old one
    assert (out / "metrics.jsonl").read_text() == "" and not list((out / "best").iterdir())


def test_best_epochs_and_their_average() -> None:
    history = [{"epoch": e, "mAP10": s} for e, s in enumerate([0.1, 0.5, 0.3, 0.5, 0.2, 0.4, 0.05], start=1)]
    assert best_epochs(history, 5) == [2, 4, 6, 3, 5]  # ties to the earlier epoch
    assert best_epochs(history[:2], 5) == [2, 1]
    states = [
        {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(7)},
        {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9)},
    ]
    avg = average_state_dicts(states)
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and avg["n"].item() == 7 and avg["w"].dtype == torch.float32


# ---------------------------------------------------------------- data


def test_epoch_batches_split_ranks_and_follow_the_seed() -> None:
    one = batches.epoch_batches(20, epoch=3, seed=1, batch=6)
    assert (
        one
        == batches.epoch_batches(20, epoch=3, seed=1, batch=6)
        != batches.epoch_batches(20, epoch=4, seed=1, batch=6)
    )
    assert len(one) == 3 and all(len(b) == 6 for b in one)
    r0, r1 = (batches.epoch_batches(20, 3, 1, 6, rank=r, world=2) for r in (0, 1))
    assert len(r0) == len(r1) and all(len(b) == 3 for b in r0 + r1)
    assert not {i for b in r0 for i in b} & {i for b in r1 for i in b}


def test_pairs_are_drawn_from_seed_epoch_and_clip(tmp_path: Path) -> None:
    good = audiogen.write_audio(tmp_path / "a.wav", audiogen.noise(2.0))
    bad = audiogen.write_not_audio(tmp_path / "b.wav")
    clips = data.ClipSet("t", (data.Clip(bad, ("x",)), data.Clip(good, ("one", "two", "three"))))
    ds = batches.PairDataset(clips, crop_seconds=0.5, seed=0)
    x, caption, unreadable = ds[(0, 1)]
    y, again, _ = ds[(0, 1)]
    assert x.shape == (22050,) and np.array_equal(x, y) and caption == again
    assert {ds[(e, 1)][1] for e in range(12)} == {"one", "two", "three"}
    z, _, unreadable = ds[(0, 0)]  # the unreadable clip is replaced by the next one, and reported
    assert len(unreadable) == 1 and "b.wav" in unreadable[0] and z.shape == (22050,)
    batch = batches.collate([ds[(0, 1)], ds[(1, 1)]])
    assert batch["audio"].shape == (2, 1, 22050) and batch["tokens"].shape[0] == 2 and batch["tokens"].shape[1] < 77


class _Pids(batches.PairDataset):
    """Notes which process decodes each item."""

    def __init__(self, clips: data.ClipSet, log: Path) -> None:
        super().__init__(clips, crop_seconds=0.1, seed=0)
        self.log = log

    def __getitem__(self, key: tuple[int, int]):  # type: ignore[no-untyped-def]
        with open(self.log, "a") as f:
            f.write(f"{key[0]} {os.getpid()}\n")
        return super().__getitem__(key)


def test_one_loader_keeps_its_decoding_processes_across_epochs(tmp_path: Path) -> None:
    clip = audiogen.write_audio(tmp_path / "a.wav", audiogen.noise(0.3))
    clips = data.ClipSet("t", tuple(data.Clip(clip, (f"c{i}",)) for i in range(8)))
    loader, order = batches.pair_loader(_Pids(clips, tmp_path / "pids"), workers=2)
    for epoch in range(3):
        order.set(batches.epoch_batches(8, epoch, seed=0, batch=2), epoch)
        assert sum(len(b["tokens"]) for b in loader) == 8
    by_epoch: dict[str, set[str]] = {}
    for line in (tmp_path / "pids").read_text().splitlines():
        epoch, pid = line.split()
        by_epoch.setdefault(epoch, set()).add(pid)
    assert set(by_epoch) == {"0", "1", "2"} and by_epoch["0"] == by_epoch["1"] == by_epoch["2"]  # the same two workers
    assert len(by_epoch["0"]) == 2 and str(os.getpid()) not in by_epoch["0"]


def test_user_captions_skip_bad_rows_and_hold_out_clips(tmp_path: Path) -> None:
    for i in range(4):
        audiogen.write_audio(tmp_path / f"s{i}.wav", audiogen.sine(300 * (i + 1), 0.2))
    (tmp_path / "pairs.csv").write_text(
        "path,caption\ns0.wav,a tone\ns0.wav,a beep\ns1.wav,a hum\nnothing.wav,gone\ns2.wav\ns2.wav,a whistle\n"
        "s3.wav,\ns3.wav,a tone again\n"
    )
    got = data.read_captions(tmp_path / "pairs.csv")
    assert [c.path.name for c in got.clips] == ["s0.wav", "s1.wav", "s2.wav", "s3.wav"]
    assert got.clips[0].captions == ("a tone", "a beep") and len(got.problems) == 3
    assert any("line 5" in p for p in got.problems)
    train, val = data.load_sources(None, None, tmp_path / "pairs.csv", val_fraction=0.25)
    assert len(train) == 3 and len(val) == 1 and not {c.path for c in val.clips} & {c.path for c in train.clips}


def test_audiocaps_layouts(tmp_path: Path) -> None:
    header = "audiocap_id,youtube_id,start_time,caption\n"
    # audiocaps-download: <split>/<audiocap_id>.wav; the five validation rows of a clip are five files of it
    a = tmp_path / "a"
    (a / "train").mkdir(parents=True)
    (a / "val").mkdir()
    (a / "train.csv").write_text(header + "1,-abc_12,30,a dog barks\n2,zzz,0,a cat\n3,x\n")
    (a / "val.csv").write_text(header + "".join(f"{10 + i},vvv,10,caption {i}\n" for i in range(5)))
    audiogen.write_audio(a / "train" / "1.wav", audiogen.sine(440, 0.2))
    for i in range(5):
        audiogen.write_audio(a / "val" / f"{10 + i}.wav", audiogen.sine(440, 0.2))
    train = data.read_audiocaps(a, "train")
    assert [c.captions for c in train.clips] == [("a dog barks",)] and len(train.problems) == 2
    val = data.read_audiocaps(a, "validation")
    assert len(val.clips) == 1 and len(val.clips[0].captions) == 5
    # flat, AudioSet-style names beside one CSV
    b = tmp_path / "b"
    b.mkdir()
    (b / "captions.csv").write_text(header + "1,-abc_12,30,a dog barks\n2,q_q,0,rain\n")
    audiogen.write_audio(b / "-abc_12_30.flac", audiogen.sine(440, 0.2))
    audiogen.write_audio(b / "Yq_q.wav", audiogen.sine(440, 0.2))
    assert [c.path.name for c in data.read_audiocaps(b, "train").clips] == ["-abc_12_30.flac", "Yq_q.wav"]
    assert data.read_audiocaps(b, "validation") is None


def test_missing_or_broken_sources_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        data.load_sources(tmp_path / "nope", None, None)
    with pytest.raises(DatasetError, match="No training data"):
        data.load_sources(None, None, None)
    (tmp_path / "bad.csv").write_text("only one field\n\n")
    with pytest.raises(DatasetError, match="no usable captioned clips"):
        data.read_captions(tmp_path / "bad.csv")


# ---------------------------------------------------------------- CLI


def test_cli_finetunes_and_the_model_works_with_weights(tmp_path: Path, clotho_dir: Path, init: str) -> None:
    runner = CliRunner()
    args = [
        "finetune",
        "--clotho",
        str(clotho_dir),
        "--init",
        init,
        "--epochs",
        "2",
        "--name",
        "mine",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "1",
        "--crop-seconds",
        "0.3",
        "--workers",
        "0",
        "--out",
        str(tmp_path / "run"),
        "--json",
    ]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["finished"] and summary["step"] == 6 and len(summary["history"]) == 2
    emb = runner.invoke(app, ["embed", "--weights", "mine", "--text", "a low hum", "--json"])
    assert emb.exit_code == 0, emb.output
    assert "mine" in runner.invoke(app, ["weights", "list"]).stdout
    # The fine-tuned model serves every command: index, search and the benchmark.
    db = str(tmp_path / "ft.db")
    indexed = runner.invoke(app, ["index", str(clotho_dir / "validation"), "-w", "mine", "--db", db, "--json"])
    assert indexed.exit_code == 0, indexed.output
    assert json.loads(indexed.stdout.splitlines()[-1])["model"] == "mine"
    found = runner.invoke(app, ["search", "a low hum", "--db", db, "--json", "-k", "3"])
    assert found.exit_code == 0 and len(json.loads(found.stdout)) == 3, found.output
    bench = runner.invoke(app, ["bench", "clotho", str(clotho_dir), "--split", "validation", "-w", "mine", "--json"])
    assert bench.exit_code == 0 and 0 <= json.loads(bench.stdout)["mAP10"] <= 1, bench.output


def test_cli_reports_skipped_rows_and_refuses_bad_input(tmp_path: Path, init: str) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["finetune", "--clotho", str(tmp_path / "nowhere"), "--init", init])
    assert missing.exit_code != 0
    assert missing.stderr.strip().count("\n") == 0 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.output
    nothing = runner.invoke(app, ["finetune", "--init", init])
    assert nothing.exit_code != 0 and "No training data" in nothing.stderr
    for i in range(6):
        audiogen.write_audio(tmp_path / f"s{i}.wav", audiogen.sine(200 * (i + 1), 0.5))
    rows = "".join(f"s{i}.wav,tone number {i}\n" for i in range(6)) + "s9.wav,missing\njust one field\n"
    (tmp_path / "pairs.csv").write_text(rows)
    args = [
        "finetune",
        "--captions",
        str(tmp_path / "pairs.csv"),
        "--init",
        init,
        "--batch",
        "2",
        "--max-steps",
        "1",
        "--crop-seconds",
        "0.3",
        "--workers",
        "0",
        "--val-fraction",
        "0.3",
        "--out",
        str(tmp_path / "run"),
    ]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "Skipped 2 bad rows" in done.stderr and "--resume" in done.stdout


def test_cli_defaults_are_the_recipe() -> None:
    import typer.main

    command = typer.main.get_command(app).commands["finetune"]
    defaults = {p.name: p.default for p in command.params}
    recipe = TrainConfig()
    for name in TrainConfig.__dataclass_fields__:
        assert defaults[name] == getattr(recipe, name), name


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 2), (3, 3), (64, 4)])
def test_default_workers_are_no_more_than_the_cores(monkeypatch: pytest.MonkeyPatch, cores: int, workers: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))  # what the DataLoader counts too
    assert TrainConfig().workers == workers
    assert TrainConfig(workers=7).workers == 7  # asked for, not a default


def test_the_default_loader_starts_without_a_warning(tmp_path: Path) -> None:
    """PyTorch warns when a loader has more workers than cores; the default never does (issue 21)."""
    clip = audiogen.write_audio(tmp_path / "a.wav", audiogen.noise(0.3))
    clips = data.ClipSet("t", tuple(data.Clip(clip, (f"c{i}",)) for i in range(4)))
    loader, order = batches.pair_loader(batches.PairDataset(clips, crop_seconds=0.1, seed=0), TrainConfig().workers)
    order.set(batches.epoch_batches(4, 0, seed=0, batch=2), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the DataLoader's "suggested max number of worker" warning fails the test
        assert sum(len(b["tokens"]) for b in loader) == 4


def test_train_throughput_reports_speed_and_memory() -> None:
    got = train_throughput(TINY, "cpu", batch=2, crop_seconds=0.3, steps=1)
    assert got["clips_per_s"] > 0 and got["peak_memory_mb"] > 0 and got["ms_per_step"] > 0
    assert (got["device"], got["dtype"], got["batch"]) == ("cpu", "float32", 2)
