"""The model against the reference fixture (full size) and the spec's edge cases (tiny sizes)."""

import math

import numpy as np
import pytest
import torch
from modelkit import DATA, synthetic_model, synthetic_state_dict, weights_recipe

from audiofind.errors import WeightsError
from audiofind.model.audio import AudioEncoder, blackmanharris, fbsp_filters, frame_count, frame_signal
from audiofind.model.audioclip import AudioCLIP
from audiofind.model.config import TINY, AudioCLIPConfig
from audiofind.model.inference import prepare_for_inference, prepare_text_for_inference
from audiofind.model.load import from_state_dict
from audiofind.model.tokenizer import tokenize

REF = np.load(DATA / "public_reference.npz")
INTER = np.load(DATA / "public_intermediates.npz")


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """The fixture's tolerance measure on unit-normalised vectors."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def full() -> AudioCLIP:
    sd = synthetic_state_dict(AudioCLIPConfig())
    # The weights must be the fixture's before the outputs can be compared.
    prints = weights_recipe.fingerprint(sd)
    assert len(REF["weights_keys"]) == len(sd) == 861
    for key, fp in zip(REF["weights_keys"], REF["weights_fingerprint"]):
        np.testing.assert_allclose(prints[str(key)], fp, rtol=1e-6, atol=1e-12)
    return from_state_dict(sd)


@pytest.fixture(scope="module")
def inference_audio() -> AudioEncoder:
    """The audio tower as load_encoder prepares it: batch norm folded, channels-last, fused on CPU."""
    return prepare_for_inference(from_state_dict(synthetic_state_dict(AudioCLIPConfig()), towers=["audio"]))


@pytest.mark.parametrize("prepared", [False, True], ids=["as-trained", "for-inference"])
@pytest.mark.parametrize("name", ["mono_2s", "mono_0p3s"])
def test_audio_matches_reference(full: AudioCLIP, inference_audio: AudioEncoder, name: str, prepared: bool) -> None:
    x = torch.from_numpy(REF[f"audio__{name}"].astype(np.float32))[:, None, :]  # int16 values as floats
    audio = inference_audio if prepared else full.audio
    with torch.inference_mode():
        db = audio.spectrogram(x)[0].numpy()
        emb = audio(x).numpy()
        assert np.array_equal(emb, audio(x).numpy())  # bitwise deterministic
    ref_db = INTER[f"xdb_f64__{name}"][0, 0]
    loud = ref_db > -60  # quiet bins near the 1e-18 floor differ most between float32 and float64
    assert np.abs(db - ref_db)[loud].max() < 0.01
    assert rel(emb, REF[f"audio_emb_f64__{name}"]) < 5e-5
    assert rel(emb, REF[f"audio_emb__{name}"]) < 5e-4  # and close to the float32 reference run


@pytest.mark.parametrize("prepared", [False, True], ids=["as-trained", "for-inference"])
def test_text_matches_reference(full: AudioCLIP, prepared: bool) -> None:
    captions = [str(c) for c in REF["caption_texts"]]
    tokens = tokenize(captions)
    assert torch.equal(tokens, torch.from_numpy(REF["text_tokens"]))
    n = int(tokens.argmax(-1).max()) + 1
    text = (
        prepare_text_for_inference(from_state_dict(synthetic_state_dict(AudioCLIPConfig()), towers=["text"]))
        if prepared
        else full
    )
    with torch.inference_mode():
        trimmed = text.encode_text(tokens[:, :n]).numpy()
        whole = text.encode_text(tokens).numpy()
    assert rel(trimmed, REF["text_emb_f64"]) < 1e-5
    assert rel(whole, REF["text_emb_f64"]) < 1e-5  # trimming to the longest sequence changes nothing
    assert math.isclose(full.logit_scale_at.item(), float(REF["logit_scale_at_raw"]), rel_tol=1e-6)


def test_parameter_counts_match_spec(full: AudioCLIP) -> None:
    assert sum(p.numel() for p in full.audio.parameters()) == 32_104_771
    assert (
        sum(p.numel() for n, p in full.named_parameters() if not n.startswith("audio.") and n != "logit_scale_at")
        == 63_690_240
    )


def test_window_is_scipy_blackmanharris() -> None:
    w = blackmanharris(1654).double()
    assert w.shape == (1654,)
    assert math.isclose(w[0].item(), 6e-5, abs_tol=1e-9)
    assert math.isclose(w[827].item(), 1.0, abs_tol=1e-6)  # the centre of the periodic window
    np.testing.assert_allclose(w.numpy(), weights_recipe.blackmanharris_periodic(1654), atol=1e-7)


@pytest.mark.parametrize(
    "n,frames",
    [(13230, 22), (1000, 1), (220500, 392), (882000, 1571), (88200, 156), (132300, 234), (1654, 1), (1655, 2)],
)
def test_frame_count_examples_from_spec(n: int, frames: int) -> None:
    assert frame_count(n, 1654, 561) == frames


def test_framing_centres_the_zeros() -> None:
    x = torch.arange(1, 13231, dtype=torch.float64)[None]  # N = 13230 -> 102 zeros before, 103 after
    f = frame_signal(x, 1654, 561)
    assert f.shape == (1, 22, 1654)
    assert (f[0, 0, :102] == 0).all() and f[0, 0, 102] == 1
    assert f[0, -1, -104] == 13230 and (f[0, -1, -103:] == 0).all()
    short = frame_signal(torch.ones(1, 1000), 1654, 561)
    assert short.shape == (1, 1, 1654) and (short[0, 0, :327] == 0).all() and (short[0, 0, 327:1327] == 1).all()


def test_fbsp_at_init_is_a_plain_dft() -> None:
    # m = 0 gives a flat envelope, so each filter is sqrt(fb) * exp(-i fc t) / sqrt(n_fft).
    k = 1025
    re, im = fbsp_filters(
        torch.zeros(k, dtype=torch.float64),
        torch.ones(k, dtype=torch.float64),
        torch.arange(k, dtype=torch.float64),
        2048,
    )
    t = math.pi * torch.linspace(-1, 1, 2048, dtype=torch.float64) + 1e-8
    np.testing.assert_allclose(re[5].numpy(), (torch.cos(5 * t) / math.sqrt(2048)).numpy(), atol=1e-12)
    np.testing.assert_allclose(im[5].numpy(), (-torch.sin(5 * t) / math.sqrt(2048)).numpy(), atol=1e-12)


def test_fbsp_negative_lobes_are_complex() -> None:
    # With m = 0.5 the envelope on the sinc's negative lobes is |u|^m * e^{i pi m}: purely imaginary there.
    m, fb, fc = (torch.tensor([v], dtype=torch.float64) for v in (0.5, 8.0, 0.0))
    re, im = fbsp_filters(m, fb, fc, 2048)
    t = math.pi * torch.linspace(-1, 1, 2048, dtype=torch.float64) + 1e-8
    u = torch.sinc(8.0 * t / (0.5 + 1e-8) / math.pi)  # torch's sinc is the normalised one
    negative = u < 0
    assert negative.any()
    assert torch.allclose(re[0][negative], torch.zeros(int(negative.sum()), dtype=torch.float64), atol=1e-12)
    assert (im[0][negative].abs() > 0).all()


def test_tiny_model_edge_lengths_and_levels() -> None:
    model = synthetic_model(TINY)
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for n in (1, 50, 199, 200, 201, 44100):  # shorter than a frame, exactly one, just over, a second
            e = model.encode_audio(torch.from_numpy(rng.normal(0, 3000, (1, 1, n)).astype(np.float32)))
            assert e.shape == (1, 32) and torch.isfinite(e).all()
        silence = model.encode_audio(torch.zeros(1, 1, 44100))  # digital silence is a DC level, not zeros
        clipped = model.encode_audio(
            torch.full((1, 1, 44100), 32767.0).index_fill_(-1, torch.arange(0, 44100, 2), -32768.0)
        )
    assert torch.isfinite(silence).all() and torch.isfinite(clipped).all()


def test_stereo_sums_channel_features() -> None:
    model = synthetic_model(TINY)
    left, right = torch.randn(1, 1, 8000) * 4000, torch.randn(1, 1, 8000) * 4000
    with torch.inference_mode():
        both = model.encode_audio(torch.cat([left, right], dim=1))
        one, other = model.encode_audio(left), model.encode_audio(right)
        flat = model.encode_audio(left[:, 0])  # (B, N) means one channel
    torch.testing.assert_close(both, one + other - model.audio.fc.bias, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(flat, one)


def test_filter_bank_cache_follows_parameter_edits() -> None:
    model = synthetic_model(TINY)
    x = torch.randn(1, 1, 4000) * 3000
    with torch.inference_mode():
        a = model.encode_audio(x)
        assert torch.equal(a, model.encode_audio(x))  # cached bank, same result
    with torch.no_grad():
        model.audio.fbsp.fc.add_(3.0)  # an in-place edit, as an optimiser step makes
    with torch.inference_mode():
        b = model.encode_audio(x)
    assert not torch.allclose(a, b)


def test_training_mode_rebuilds_the_bank_with_gradients() -> None:
    model = synthetic_model(TINY).train()
    loss = model.encode_audio(torch.randn(2, 1, 4000) * 3000).pow(2).mean()
    loss.backward()
    for p in (model.audio.fbsp.m, model.audio.fbsp.fb, model.audio.fbsp.fc):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_towers_load_alone_and_refuse_wrong_keys() -> None:
    sd = synthetic_state_dict(TINY)
    audio = from_state_dict(sd, TINY, ["audio"])
    text = from_state_dict(sd, TINY, ["text"])
    assert not any(n.startswith("audio") for n, _ in text.named_parameters())
    assert "fc.weight" in dict(audio.named_parameters())
    # The converter drops unused counters and the empty fbsp bias: still loadable.
    slim = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked") and k != "audio.fbsp.bias"}
    from_state_dict(slim, TINY)
    broken = dict(slim)
    del broken["audio.fc.weight"]
    broken["ln_final.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError, match=r"missing audio\.fc\.weight.*wrong shape ln_final\.weight"):
        from_state_dict(broken, TINY)
