"""The Encoder as inference runs it: batch norm folded (fused on CPU), exact batching without padding, precision.

The requires_cuda tests run where a CUDA device is present (.ci/device-check runs them); the rest run everywhere.
"""

import math
from pathlib import Path

import audiogen
import numpy as np
import pytest
import torch
from modelkit import DATA, count_forwards, register_tiny, synthetic_model, synthetic_state_dict
from torch import nn

from audiofind.audio import decode
from audiofind.device import precision_scope
from audiofind.errors import DeviceError
from audiofind.model.config import TINY, AudioCLIPConfig
from audiofind.model.encoder import Encoder, exact_batches, from_model, load_encoder
from audiofind.model.inference import FusedBottleneck, FusedConv, fold_batch_norm, prepare_for_inference
from audiofind.model.load import from_state_dict

REF = np.load(DATA / "public_reference.npz")


def on_cuda(test):  # type: ignore[no-untyped-def]
    """Mark a test requires_cuda and skip it where no CUDA device is present."""
    return pytest.mark.requires_cuda(
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test)
    )


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """The fixture's measure on unit-normalised rows: max |a - b| / max |b|."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float(np.abs(a - b).max() / np.abs(b).max())


def batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def test_loading_for_inference_folds_batch_norm() -> None:
    name = register_tiny()  # saved as finetune saves a fine-tuned model
    enc = load_encoder(name, "cpu", ["audio"])
    assert enc.audio.folded and batch_norms(enc.audio) == 0
    assert any(isinstance(m, FusedBottleneck) for m in enc.audio.modules())  # on CPU, conv+ReLU(+add) in one call
    with pytest.raises(RuntimeError, match="folded"):
        enc.audio.train()  # nothing left to train: a fine-tuning run builds its own model
    unfolded = synthetic_model(TINY, ("audio",))
    x = np.random.default_rng(0).normal(0, 3000, 30000).astype(np.float32)
    with torch.inference_mode():
        plain = unfolded(torch.from_numpy(x)[None, None]).numpy()
    assert rel(enc.embed_audio([x]), plain) < 1e-5  # the same model, not just a fast one


def test_training_keeps_batch_norm() -> None:
    model = synthetic_model(TINY).train()
    n = batch_norms(model.audio)
    enc = from_model(model, TINY, torch.device("cpu"), "validation", "")  # what fine-tuning's validation does
    enc.embed_audio([np.zeros(8000, dtype=np.float32)])
    model.train()
    assert n > 0 and batch_norms(model.audio) == n and not model.audio.folded
    loss = model.encode_audio(torch.randn(2, 1, 4000) * 3000).pow(2).mean()
    loss.backward()  # the in-place ReLUs and residual add leave autograd intact
    assert model.audio.layer1[0].bn1.weight.grad is not None
    with pytest.raises(RuntimeError, match="eval"):
        fold_batch_norm(model.audio)


def test_fused_convolutions_lay_weights_out_for_the_size_they_see() -> None:
    """Speed, not bits, depends on it (a weight laid out for another size takes a slow generic reorder)."""
    model = prepare_for_inference(synthetic_model(TINY, ("audio",)))
    convs = [m for m in model.modules() if isinstance(m, FusedConv)]
    with torch.inference_mode():
        for n in (8000, 20000, 8000):
            model(torch.zeros(1, 1, n))
            assert all(conv.laid_out is not None for conv in convs)
            assert model.conv1.laid_out[0] == (3, TINY.audio.n_bins // 3, 1 + -(-(n - 200) // 100))  # (C, H, frames)


def test_exact_batches_group_equal_lengths_without_padding() -> None:
    lengths = [5, 7, 5, 5, 9, 7] + [3] * 17
    batches = exact_batches(lengths, 8)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every item once, nothing added
    assert all(len({lengths[i] for i in b}) == 1 for b in batches)
    assert sorted(len(b) for b in batches) == [1, 1, 2, 3, 8, 8]  # 17 threes: ceil(17 / 8) = 3 batches
    assert exact_batches(lengths, 1) == [[i] for i in [0, 2, 3, 1, 5, 4, *range(6, 23)]]


def test_batching_wastes_nothing_and_changes_no_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    shorts = [rng.normal(0, 3000, 3000 + 613 * i).astype(np.float32) for i in range(64)]  # 64 distinct lengths
    windows = []
    for seconds, seed in ((23.0, 1), (31.7, 2), (47.2, 3)):  # three long recordings, 10 s windows every 5 s
        path = audiogen.write_audio(tmp_path / f"long{seed}.flac", audiogen.noise(seconds, seed=seed, amp=0.3))
        windows += [w.samples for w in decode.iter_windows(path)]
    assert len(windows) == 4 + 6 + 9 and {len(w) for w in windows} == {decode.N_WINDOW}
    clips = shorts[:20] + windows[:9] + shorts[20:] + windows[9:]  # as a buffer gathered across files holds them
    model = prepare_for_inference(synthetic_model(TINY, ("audio",)))
    batched = from_model(model, TINY, torch.device("cpu"), "tiny", "a" * 64, batch_size=8)
    calls = count_forwards(model)
    together = batched.embed_audio(clips)
    assert len(calls) == 64 + math.ceil(len(windows) / 8)  # one forward per short clip, 3 for the 19 windows
    assert sum(rows for rows, _ in calls) == len(clips)  # no padding rows
    assert sorted(rows for rows, n in calls if n == decode.N_WINDOW) == [3, 8, 8]
    one = from_model(model, TINY, torch.device("cpu"), "tiny", "a" * 64, batch_size=1)
    alone = np.stack([one.embed_audio([c])[0] for c in clips])
    assert np.array_equal(together, alone)  # bitwise: a vector never depends on what else was pending


def test_full_size_rows_are_bitwise_the_same_in_any_batch() -> None:
    """oneDNN's convolutions give each row the same bits for 1..8 rows (checked here at full size); the matrix
    products of the pooled features do not, so the model runs those row by row. Packed text rows keep theirs."""
    audio = prepare_for_inference(from_state_dict(synthetic_state_dict(AudioCLIPConfig()), towers=["audio"]))
    x = torch.from_numpy(np.random.default_rng(5).normal(0, 3000, (8, 1, 30000)).astype(np.float32))
    with torch.inference_mode():
        alone = torch.cat([audio(x[i : i + 1]) for i in range(8)])
        for b in (2, 5, 8):
            assert torch.equal(audio(x[:b]), alone[:b]), f"batch of {b}"
    text = from_state_dict(synthetic_state_dict(AudioCLIPConfig()), towers=["text"])
    enc = from_model(
        text, AudioCLIPConfig(), torch.device("cpu"), "synthetic", "0" * 64, prepare=True, text_batch_size=64
    )
    captions = [str(c) for c in REF["caption_texts"]] * 2  # 12 captions of 7 lengths, twice
    assert np.array_equal(enc.embed_text(captions), np.stack([enc.embed_text([c])[0] for c in captions]))


CAPTIONS = ["rain", "a door creaks open slowly", "rain on a tin roof", "birds", "dogs bark", "x", "a car drives past"]


def token_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """(captions, tokens) of every forward pass the text tower runs from now on."""
    shapes: list[tuple[int, ...]] = []
    model.token_embedding.register_forward_hook(lambda _m, args, _out: shapes.append(tuple(args[0].shape)))
    return shapes


@pytest.mark.parametrize("packed", [True, False], ids=["packed-cpu", "padded"])
def test_captions_share_forward_passes_and_keep_every_bit(packed: bool) -> None:
    model = synthetic_model(TINY, ("text",))
    enc = from_model(model, TINY, torch.device("cpu"), "tiny", "a" * 64, prepare=packed, text_batch_size=4)
    shapes = token_shapes(model)
    together = enc.embed_text(CAPTIONS)
    if packed:  # oneDNN's packed rows: equal lengths together as they are (3 tokens: rain, birds, x)
        assert sorted(shapes) == [(1, 4), (1, 6), (1, 7), (1, 8), (3, 3)]
    else:  # elsewhere: one fixed shape, padded
        assert shapes == [(4, 8), (4, 8)]
    assert all(np.array_equal(together[i], enc.embed_text([c])[0]) for i, c in enumerate(CAPTIONS))


def test_precision_other_than_fp32_is_refused_off_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    from audiofind import device

    name = register_tiny()
    with pytest.raises(DeviceError, match="for CUDA devices"):
        load_encoder(name, "cpu", ["audio"], precision="tf32")
    monkeypatch.setattr(device, "describe_cpu", lambda: ("Old CPU", ["AVX2", "AVX-512"]))  # bf16 wants the hardware
    with pytest.raises(DeviceError, match="needs a CUDA GPU or a CPU with AVX-512-BF16 or AMX"):
        load_encoder(name, "cpu", ["audio"], precision="bf16")
    with pytest.raises(DeviceError, match="Unknown precision 'fp16'"):
        load_encoder(name, "cpu", ["audio"], precision="fp16")


def test_precision_scope_sets_and_restores_tf32() -> None:
    """The switches are plain flags, so their handling is checked here; their effect only on a GPU (below)."""
    flags = [(torch.backends.cuda.matmul, "fp32_precision"), (torch.backends.cudnn.conv, "fp32_precision")]
    before = [getattr(obj, name) for obj, name in flags]
    gpu = torch.device("cuda")
    with precision_scope("fp32", gpu):
        assert [getattr(obj, name) for obj, name in flags] == ["ieee", "ieee"]  # TF32 off: CUDA matches the CPU
    with precision_scope("tf32", gpu):
        assert [getattr(obj, name) for obj, name in flags] == ["tf32", "tf32"]
    with precision_scope("bf16", gpu):  # the front end's float32 steps stay exact under bf16
        assert [getattr(obj, name) for obj, name in flags] == ["ieee", "ieee"]
    assert [getattr(obj, name) for obj, name in flags] == before


# --- on a CUDA device (.ci/device-check) ---


def full_encoder(device: str, precision: str = "fp32", batch_size: int = 1) -> Encoder:
    """The fixture's full-size weights prepared for inference on device, as load_encoder prepares them."""
    model = from_state_dict(synthetic_state_dict(AudioCLIPConfig())).to(device)
    return from_model(
        model,
        AudioCLIPConfig(),
        torch.device(device),
        "synthetic",
        "0" * 64,
        prepare=True,
        batch_size=batch_size,
        text_batch_size=64 if batch_size > 1 else 1,
        precision=precision,
    )


def generated_library(n: int = 48) -> list[np.ndarray]:
    """Tones, chords, sweeps and noises of 1-6 s, each different: the kind of sample library people index."""
    rng = np.random.default_rng(11)
    out = []
    for i in range(n):
        seconds = 1.0 + 5.0 * rng.random()
        kind = i % 4
        if kind == 0:
            x = audiogen.sine(80 * 1.13**i, seconds)
        elif kind == 1:
            x = audiogen.chirp(100 + 50 * i, 4000 + 90 * i, seconds)
        elif kind == 2:
            x = audiogen.noise(seconds, seed=i) * np.linspace(0, 1, audiogen._n(seconds, decode.SAMPLE_RATE))
        else:
            x = audiogen.square(40 + 7 * i, seconds) + audiogen.sine(300 + 31 * i, seconds)
        out.append((np.asarray(x, dtype=np.float32).reshape(-1) * 20000).astype(np.float32))
    return out


def top10(vectors: np.ndarray) -> list[set[int]]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ unit.T
    return [set(np.argsort(-row, kind="stable")[:10].tolist()) for row in scores]


@on_cuda
def test_cuda_fp32_matches_the_cpu_on_the_fixture() -> None:
    clips = [REF[f"audio__{n}"][0].astype(np.float32) for n in REF["audio_names"]]
    captions = [str(c) for c in REF["caption_texts"]]
    cpu, gpu = full_encoder("cpu"), full_encoder("cuda", "fp32")
    for a, b in (
        (cpu.embed_audio(clips), gpu.embed_audio(clips)),
        (cpu.embed_text(captions), gpu.embed_text(captions)),
    ):
        assert rel(b, a) < 1e-4
    for name, emb in zip(REF["audio_names"], gpu.embed_audio(clips)):
        assert rel(emb, REF[f"audio_emb_f64__{name}"][0]) < 5e-5


# Measured bounds for reduced precision on the fixture's weights (bench speed --device cuda prints the figures).
TF32_BOUND, BF16_BOUND = 1e-2, 5e-2


@on_cuda
@pytest.mark.parametrize("precision,bound", [("tf32", TF32_BOUND), ("bf16", BF16_BOUND)])
def test_cuda_reduced_precision_keeps_the_rankings(precision: str, bound: float) -> None:
    library = generated_library()
    exact = full_encoder("cuda", "fp32").embed_audio(library)
    reduced = full_encoder("cuda", precision).embed_audio(library)
    assert 0 < rel(reduced, exact) < bound
    assert top10(reduced) == top10(exact)


@on_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_batches_are_bitwise_one_by_one(precision: str) -> None:
    rng = np.random.default_rng(7)
    windows = [rng.normal(0, 3000, decode.N_WINDOW).astype(np.float32) for _ in range(11)]  # batches of 8 and 3
    clips = windows + [rng.normal(0, 3000, 20000 + 999 * i).astype(np.float32) for i in range(3)]
    batched = full_encoder("cuda", precision, batch_size=8)
    calls = count_forwards(batched.audio)
    together = batched.embed_audio(clips)
    assert sorted(rows for rows, _ in calls) == [1, 1, 1, 3, 8]
    one = full_encoder("cuda", precision, batch_size=1)
    assert np.array_equal(together, np.stack([one.embed_audio([c])[0] for c in clips]))
    captions = [str(c) for c in REF["caption_texts"]]
    assert np.array_equal(batched.embed_text(captions), np.stack([batched.embed_text([c])[0] for c in captions]))
