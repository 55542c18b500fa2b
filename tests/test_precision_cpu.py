"""bf16 on CPUs that have it (AVX-512-BF16 or AMX): judged by what a user sees, the files a search returns."""

from dataclasses import replace
from pathlib import Path

import audiogen
import numpy as np
import pytest
import torch
from modelkit import synthetic_model
from typer.testing import CliRunner

from audiofind import device
from audiofind.cli import app
from audiofind.errors import DeviceError
from audiofind.library.sync import prepare, sync
from audiofind.model.config import AudioCLIPConfig
from audiofind.model.encoder import from_model
from audiofind.store.sqlite.store import SqliteStore

CPU_BF16 = bool(set(device.describe_cpu()[1]) & set(device.BF16_EXTENSIONS))
CAPTIONS = ["rain on a tin roof", "a door creaks open slowly", "a dog barks twice", "wind in the trees",
            "a kick drum", "footsteps on gravel"]  # fmt: skip
runner = CliRunner()


def test_bf16_is_refused_on_a_cpu_without_it_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    with pytest.raises(DeviceError, match=r"this CPU \(Old CPU\) has AVX2\. Use fp32"):
        device.check_precision("bf16", cpu, cpu=("Old CPU", ["AVX2"]))
    assert device.check_precision("bf16", cpu, cpu=("New CPU", ["AVX2", "AVX-512", "AVX-512-BF16"])) == "bf16"
    assert device.check_precision("bf16", cpu, cpu=("Intel CPU", ["AVX2", "AMX"])) == "bf16"
    with pytest.raises(DeviceError, match="is for CUDA"):
        device.check_precision("tf32", cpu, cpu=("New CPU", ["AVX-512-BF16"]))
    monkeypatch.setattr(device, "describe_cpu", lambda: ("Old CPU", ["AVX2"]))
    result = runner.invoke(app, ["embed", "-t", "hi", "--device", "cpu", "--precision", "bf16"])
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        "error: Precision 'bf16' needs a CUDA GPU or a CPU with AVX-512-BF16 or AMX; this CPU (Old CPU) has AVX2. "
        "Use fp32 (the default)."
    ]


def test_the_help_and_the_readme_say_where_each_precision_runs() -> None:
    from audiofind.cli.common import PrecisionOpt

    said = " ".join(PrecisionOpt.__metadata__[0].help.split())  # what --precision's help prints, unwrapped
    assert (
        "tf32 on CUDA" in said
        and f"bf16 (the ResNeXt in bfloat16) on CUDA or on a CPU with {' or '.join(device.BF16_EXTENSIONS)}" in said
    )
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8").split())
    assert "refused off CUDA" not in readme and "taken on a CPU with AVX-512-BF16 or AMX" in readme


@pytest.fixture(scope="module")
def full_size():  # type: ignore[no-untyped-def]
    cfg = AudioCLIPConfig()
    return from_model(synthetic_model(cfg), cfg, torch.device("cpu"), "fixture", "f" * 64, prepare=True)


@pytest.mark.slow
@pytest.mark.skipif(not CPU_BF16, reason="this CPU has neither AVX-512-BF16 nor AMX")
def test_bf16_search_results_agree_with_fp32(full_size, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A generated library: tones, chirps, noise, square waves of 0.5-6 s and one of 12 s (windowed), 20 files.
    root = tmp_path / "lib"
    root.mkdir()
    rng = np.random.default_rng(7)
    for i in range(20):
        seconds = 12.0 if i == 0 else float(rng.choice([0.5, 1.0, 2.0, 3.0, 6.0]))
        kind = i % 4
        signal = (audiogen.sine(110 * (i + 1), seconds) if kind == 0 else audiogen.chirp(200 + 40 * i, 4000, seconds)
                  if kind == 1 else audiogen.noise(seconds, seed=i) if kind == 2 else audiogen.square(3 + i, seconds))  # fmt: skip
        audiogen.write_audio(root / f"{i:02d}.wav", signal)
    found = {}
    for precision in ("fp32", "bf16"):
        enc = replace(full_size, precision=precision)
        with SqliteStore.open(tmp_path / f"{precision}.db") as index:
            prepare(index, enc)
            sync(index, enc, [root])
            queries = [
                *full_size.embed_text(CAPTIONS),
                *full_size.embed_audio([audiogen.noise(2.0, seed=99)[0] * 32768]),
            ]
            found[precision] = [index.search(q, 10, exact=True) for q in queries]
    overlaps, moved_by = [], 0.0
    for exact, moved in zip(found["fp32"], found["bf16"], strict=True):
        overlaps.append(len({h.path for h in exact} & {h.path for h in moved}))
        scores = {h.path: h.score for h in moved}
        moved_by = max([moved_by, *(abs(h.score - scores[h.path]) for h in exact if h.path in scores)])
    # Measured here (AMD EPYC, AVX-512-BF16): 10 of 10 for all 7 queries, scores within 4.4e-4 (README, precision).
    assert min(overlaps) >= 9 and 0 < moved_by <= 1e-2, (overlaps, moved_by)  # 0: bf16 really ran
    print(f"bf16 vs fp32: top-10 overlaps {overlaps}, largest score change {moved_by:.1e}")
