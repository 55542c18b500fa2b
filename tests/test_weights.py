"""Weights: manifest, checked and resumable downloads from a local server, conversion, import, resolve, CLI."""

import builtins
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tests.conftest import DATA
from typer.testing import CliRunner

from audiofind import paths
from audiofind.cli import app
from audiofind.errors import (
    ChecksumError,
    DownloadError,
    UnknownModelError,
    UnsafeCheckpoint,
    UsageError,
    WeightsError,
    WeightsNotFound,
)
from audiofind.model import checkpoint as ckpt
from audiofind.model import weights
from httpkit import Server

KEPT = {
    "audio.conv1.weight",
    "audio.bn1.weight",
    "audio.bn1.running_mean",
    "audio.fbsp.fb",
    "audio.window",
    "audio.fc.weight",
    "token_embedding.weight",
    "positional_embedding",
    "transformer.resblocks.0.attn.in_proj_weight",
    "ln_final.weight",
    "text_projection",
    "logit_scale_at",
}
TEXT = {
    "token_embedding.weight",
    "positional_embedding",
    "transformer.resblocks.0.attn.in_proj_weight",
    "ln_final.weight",
    "text_projection",
}


def fake_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "audio.conv1.weight": (4, 1, 3, 3),
        "audio.bn1.weight": (4,),
        "audio.bn1.running_mean": (4,),
        "audio.fbsp.fb": (4,),
        "audio.window": (8,),
        "audio.fc.weight": (3, 4),
        "token_embedding.weight": (10, 4),
        "positional_embedding": (5, 4),
        "transformer.resblocks.0.attn.in_proj_weight": (12, 4),
        "ln_final.weight": (4,),
        "text_projection": (4, 3),
        "visual.conv1.weight": (2, 3, 3, 3),
    }
    sd = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    sd["audio.bn1.num_batches_tracked"] = torch.tensor(7)
    sd["audio.fbsp.bias"] = torch.zeros(0)
    for k in ("logit_scale", "logit_scale_ai", "logit_scale_at"):
        sd[k] = torch.tensor(4.6 + seed)
    return sd


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "fake.pt"
    path.parent.mkdir()
    torch.save(fake_state_dict(), path)
    return path


@pytest.fixture
def server(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    s = Server()
    data = checkpoint.read_bytes()
    s.files["tiny.pt"] = data
    entry = {"file": "tiny.pt", "size": len(data), "licence": "MIT", "description": "A tiny test model."}
    models = [
        entry | {"name": "tiny", "url": f"{s.url}/tiny.pt", "sha256": sha(data)},
        entry | {"name": "tiny-bad", "file": "bad.pt", "url": f"{s.url}/tiny.pt", "sha256": "0" * 64},
        entry | {"name": "gone", "file": "gone.pt", "url": f"{s.url}/gone.pt", "sha256": "1" * 64},
    ]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"default": "tiny", "models": models}))
    monkeypatch.setenv("AUDIOFIND_MANIFEST", str(manifest))
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def keys_of(path: Path) -> set[str]:
    with safe_open(path, framework="pt") as f:
        return set(f.keys())


def metadata_of(path: Path) -> dict[str, str]:
    with safe_open(path, framework="pt") as f:
        return f.metadata()


def test_tower_of_matches_the_published_key_list():
    rows = [line.split("\t") for line in (DATA / "audioclip-keys.tsv").read_text().splitlines()[1:] if line]
    assert len(rows) == 861
    assert all(ckpt.tower_of(key) == tower for key, _, _, tower, _ in rows)
    with pytest.raises(WeightsError, match="no AudioCLIP tower"):
        ckpt.tower_of("decoder.weight")


def test_download_converts_to_safetensors_once(server: Server, checkpoint: Path):
    calls: list[tuple[int, int]] = []
    path = weights.download("tiny", progress=lambda done, total: calls.append((done, total)))
    size = checkpoint.stat().st_size
    assert path == paths.weights_dir() / "tiny.safetensors"
    assert calls[-1] == (size, size)
    assert keys_of(path) == KEPT  # visual, two logit scales, counters and the empty bias dropped
    meta = metadata_of(path)
    assert meta["format"] == "audiofind" and meta["name"] == "tiny"
    assert meta["source_sha256"] == sha(checkpoint.read_bytes())
    assert sorted(p.name for p in paths.weights_dir().iterdir()) == ["tiny.safetensors"]  # the .pt is gone
    original = fake_state_dict()
    state = weights.read_state_dict(weights.resolve("tiny"))
    assert all(torch.equal(state[k], original[k]) for k in KEPT)
    assert weights.download("tiny") == path and len(server.requests) == 1  # no second fetch


def test_checksum_mismatch_deletes_the_file(server: Server):
    with pytest.raises(ChecksumError) as e:
        weights.download("tiny-bad")
    message = str(e.value)
    assert "0" * 64 in message and sha(server.files["tiny.pt"]) in message and "deleted" in message
    assert list(paths.weights_dir().iterdir()) == []


def test_interrupted_download_resumes_with_range(server: Server, checkpoint: Path):
    server.cut = True
    with pytest.raises(DownloadError, match="resume"):
        weights.download("tiny")
    part = paths.weights_dir() / "tiny.pt.part"
    half = checkpoint.stat().st_size // 2
    assert part.stat().st_size == half
    server.cut = False
    weights.download("tiny")
    assert server.requests == [None, f"bytes={half}-"]
    assert not part.exists()
    assert weights.resolve("tiny").sha256 == sha(checkpoint.read_bytes())


def test_server_that_ignores_range_starts_over(server: Server, checkpoint: Path):
    paths.weights_dir().mkdir(parents=True)
    (paths.weights_dir() / "tiny.pt.part").write_bytes(b"junk" * 10)
    server.ignore_range = True
    path = weights.download("tiny")
    assert server.requests == ["bytes=40-"]
    assert metadata_of(path)["source_sha256"] == sha(checkpoint.read_bytes())


def test_http_error_is_one_sentence(server: Server):
    with pytest.raises(DownloadError, match="HTTP 404") as e:
        weights.download("gone")
    assert "\n" not in str(e.value)


def test_import_pt_variants_and_safetensors(server: Server, checkpoint: Path, tmp_path: Path):
    digest = sha(checkpoint.read_bytes())
    path = weights.import_checkpoint(checkpoint, name="mine")
    assert keys_of(path) == KEPT and metadata_of(path)["source_sha256"] == digest
    assert weights.import_checkpoint(checkpoint, name="mine") == path  # the same weights again: a no-op
    with pytest.raises(WeightsError, match="already exists"):
        weights.import_checkpoint(_saved(tmp_path / "other.pt", fake_state_dict(1)), name="mine")

    # Training checkpoints wrap the state dict; old torch wrote the non-zip format, which cannot be mmapped.
    wrapped = _saved(tmp_path / "wrapped.pt", {"model": fake_state_dict(2), "step": 3})
    legacy = tmp_path / "legacy.pt"
    torch.save({"state_dict": fake_state_dict(3)}, legacy, _use_new_zipfile_serialization=False)
    assert keys_of(weights.import_checkpoint(wrapped)) == KEPT
    assert keys_of(weights.import_checkpoint(legacy)) == KEPT

    # A safetensors file from elsewhere: unused keys dropped, identity is its own sha256.
    foreign = tmp_path / "foreign.safetensors"
    save_file({k: v for k, v in fake_state_dict(4).items() if v.numel()}, foreign)
    imported = weights.import_checkpoint(foreign, name="foreign")
    assert keys_of(imported) == KEPT
    assert metadata_of(imported)["source_sha256"] == sha(foreign.read_bytes())
    # One of ours keeps its identity when imported under another name.
    assert metadata_of(weights.import_checkpoint(path, name="copy"))["source_sha256"] == digest

    sources = {m.name: m.source for m in weights.available_models()}
    assert sources == {
        "tiny": "registered",
        "tiny-bad": "registered",
        "gone": "registered",
        "copy": "imported",
        "foreign": "imported",
        "legacy": "imported",
        "mine": "imported",
        "wrapped": "imported",
    }


def _saved(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def test_importing_a_published_checkpoint_by_hand_registers_it(server: Server, checkpoint: Path):
    path = weights.import_checkpoint(checkpoint)
    assert path == paths.weights_dir() / "tiny.safetensors"
    assert next(m for m in weights.available_models() if m.name == "tiny").path == path
    assert server.requests == []
    with pytest.raises(ChecksumError, match="registered model 'tiny-bad'"):
        weights.import_checkpoint(checkpoint, name="tiny-bad")


def test_remove(server: Server, checkpoint: Path):
    weights.import_checkpoint(checkpoint, name="mine")
    weights.remove("mine")
    assert not (paths.weights_dir() / "mine.safetensors").exists()
    with pytest.raises(UnknownModelError, match="tiny"):
        weights.remove("mine")
    with pytest.raises(WeightsNotFound, match="nothing to remove"):
        weights.remove("tiny")
    server.cut = True
    with pytest.raises(DownloadError):
        weights.download("tiny")
    weights.remove("tiny")  # a partial download counts
    assert list(paths.weights_dir().glob("tiny*")) == []
    with pytest.raises(UsageError):
        weights.remove("../escape")


def test_available_models(server: Server):
    models = {m.name: m for m in weights.available_models()}
    assert list(models) == ["tiny", "tiny-bad", "gone"]
    assert models["tiny"].path is None and models["tiny"].licence == "MIT"
    weights.download("tiny")
    weights.save_model(fake_state_dict(5), "tuned", config={"embed_dim": 3}, card={"description": "Tuned."})
    models = {m.name: m for m in weights.available_models()}
    assert models["tiny"].path == paths.weights_dir() / "tiny.safetensors"
    assert models["tuned"].source == "finetuned" and models["tuned"].description == "Tuned."


def test_resolve_names_and_messages(server: Server):
    with pytest.raises(WeightsNotFound) as e:
        weights.resolve(None)  # the manifest's default
    assert str(e.value) == (
        "Model 'tiny' is not downloaded yet; run: audiofind weights download tiny "
        "(or, with a checkpoint file you already have: audiofind weights import PATH)"
    )
    with pytest.raises(UnknownModelError) as e:
        weights.resolve("nope")
    assert "'nope'" in str(e.value) and "tiny, tiny-bad, gone" in str(e.value)
    weights.download("tiny")
    resolved = weights.resolve(None)
    assert resolved.name == "tiny" and resolved.sha256 == sha(server.files["tiny.pt"]) and resolved.config is None


def test_resolve_paths(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    other = _saved(tmp_path / "other.pt", fake_state_dict(1))
    first = weights.resolve(str(other))
    assert first.sha256 == sha(other.read_bytes()) and first.name == "other"
    assert first.path == paths.weights_dir() / "converted" / f"{first.sha256}.safetensors"

    # The second use neither hashes nor unpickles the 537 MB again. (A context, not undo(): undo would also drop
    # the AUDIOFIND_HOME of conftest, and the hash book below would land in the user's own cache folder.)
    with monkeypatch.context() as m:
        m.setattr(paths, "hash_file", lambda *a, **k: pytest.fail("hashed again"))
        m.setattr(ckpt, "load_pt", lambda *a: pytest.fail("unpickled again"))
        assert weights.resolve(other) == first

    direct = tmp_path / "direct.safetensors"
    save_file({"text_projection": torch.ones(4, 3)}, direct)
    resolved = weights.resolve(direct)
    assert resolved.path == direct and resolved.sha256 == sha(direct.read_bytes())


def test_read_state_dict_by_tower(server: Server):
    weights.download("tiny")
    resolved = weights.resolve("tiny")
    assert set(weights.read_state_dict(resolved, towers=("text",))) == TEXT
    assert set(weights.read_state_dict(resolved, towers=("scale",))) == {"logit_scale_at"}
    assert set(weights.read_state_dict(resolved)) == KEPT
    with pytest.raises(ValueError):
        weights.read_state_dict(resolved, towers=("image",))


class Tampered:
    """Unpickling this creates the file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return builtins.open, (str(self.marker), "w")


def test_tampered_pickle_runs_nothing(tmp_path: Path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Tampered(control)))
    assert control.exists()  # the payload is real

    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"audio.fc.weight": Tampered(marker)}))
    zipped = _saved(tmp_path / "zipped.pt", {"audio.fc.weight": torch.ones(1), "x": Tampered(marker)})
    for path in (raw, zipped):
        with pytest.raises(UnsafeCheckpoint, match="builtins.open|io.open") as e:
            weights.import_checkpoint(path)
        assert "refused and nothing was run" in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(UnsafeCheckpoint):
            weights.resolve(str(path))
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path: Path):
    text = tmp_path / "notes.pt"
    text.write_text("hello world\n")
    listed = _saved(tmp_path / "list.pt", [1, 2, 3])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_text("not safetensors")
    for path in (text, listed, empty, bogus):
        with pytest.raises(WeightsError) as e:
            weights.import_checkpoint(path)
        assert not isinstance(e.value, UnsafeCheckpoint) and "\n" not in str(e.value)
    with pytest.raises(WeightsError, match="neither an audio nor a text tower"):
        weights.import_checkpoint(_saved(tmp_path / "visual.pt", {"visual.conv1.weight": torch.ones(2)}))


def test_save_model_identity_and_config(server: Server):
    config, card = {"embed_dim": 3, "text": {"layers": 1}}, {"description": "Tuned.", "base": "tiny"}
    sd = fake_state_dict(6)
    path = weights.save_model(sd, "tuned", config=config, card=card)
    resolved = weights.resolve("tuned")
    assert resolved.path == path and resolved.config == config and resolved.card == card
    assert weights.load_card("tuned") == card and weights.load_card(path) == card
    assert "visual.conv1.weight" not in keys_of(path)
    again = weights.save_model(dict(sd), "tuned2", config=config, card=card)
    assert metadata_of(again)["source_sha256"] == resolved.sha256  # identity is the content, not the name
    sd["audio.fc.weight"] = sd["audio.fc.weight"] + 1
    assert metadata_of(weights.save_model(sd, "tuned3", config, card))["source_sha256"] != resolved.sha256
    with pytest.raises(UsageError, match="registered"):
        weights.save_model(sd, "tiny", config, card)


runner = CliRunner()


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_cli(server: Server, checkpoint: Path):
    result = runner.invoke(app, ["weights", "list", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["tiny"]["status"] == "not downloaded" and rows["tiny"]["path"] is None

    result = runner.invoke(app, ["weights", "download"])  # no name: the manifest's default, as the README's quick start
    assert result.exit_code == 0
    assert result.stdout.strip() == str(paths.weights_dir() / "tiny.safetensors")

    result = runner.invoke(app, ["weights", "import", str(checkpoint), "--name", "mine"])
    assert result.exit_code == 0 and result.stdout.splitlines()[0].endswith("mine.safetensors")
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["weights", "list", "--json"]).stdout)}
    assert rows["tiny"]["status"] == "downloaded" and rows["mine"]["status"] == "imported"

    assert runner.invoke(app, ["weights", "list"]).exit_code == 0
    assert runner.invoke(app, ["weights", "remove", "mine"]).exit_code == 0
    assert not (paths.weights_dir() / "mine.safetensors").exists()

    assert "Unknown model 'nope'" in one_line_error(runner.invoke(app, ["weights", "download", "nope"]))
    assert "nothing to remove" in one_line_error(runner.invoke(app, ["weights", "remove", "gone"]))
    assert "HTTP 404" in one_line_error(runner.invoke(app, ["weights", "download", "gone"]))


def test_a_text_file_is_simply_not_a_checkpoint(tmp_path: Path) -> None:
    script = tmp_path / "gen.py"
    script.write_text("import sys, os\nsys.path.insert(0, 'x')\n")  # 'i' is also pickle's INST opcode
    result = runner.invoke(app, ["weights", "import", str(script)])
    assert result.exit_code == 1
    assert "not a torch checkpoint" in result.stderr and "tries to import" not in result.stderr


def _tiny_safetensors(path: Path, dtype: torch.dtype, bad_key: str | None = None) -> Path:
    """The TINY recipe weights cast to dtype, carrying the config as a fine-tuned file does; bad_key made int32."""
    from modelkit import synthetic_state_dict

    from audiofind.model.config import TINY

    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in synthetic_state_dict(TINY).items() if v.numel()}
    if bad_key:
        sd[bad_key] = sd[bad_key].to(torch.int32)
    save_file(sd, path, metadata={"config": json.dumps(TINY.to_dict())})
    return path


def _embeddings(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Unit audio and text embeddings of fixed inputs from a local model."""
    from audiofind.model.encoder import load_encoder

    enc = load_encoder(name, device="cpu")
    clips = list(np.random.default_rng(0).normal(0, 4000, (3, 20000)).astype(np.float32))
    audio, text = enc.embed_audio(clips), enc.embed_text(["rain on a tin roof", "a dog barks twice"])
    return audio / np.linalg.norm(audio, axis=-1, keepdims=True), text / np.linalg.norm(text, axis=-1, keepdims=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_are_widened_at_import(tmp_path: Path, dtype: torch.dtype) -> None:
    from modelkit import register_tiny

    full = _embeddings(register_tiny())
    result = runner.invoke(app, ["weights", "import", str(_tiny_safetensors(tmp_path / "half.safetensors", dtype))])
    assert result.exit_code == 0, result.output
    stored = paths.weights_dir() / "half.safetensors"
    with safe_open(stored, framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in keys_of(stored)} == {"F32"}
    half = _embeddings("half")
    # Measured on unit vectors: float16 differs by 3.7e-4 (eps 9.8e-4), bfloat16 by 4.1e-3 (eps 7.8e-3).
    for a, b in zip(half, full):
        assert np.isfinite(a).all()
        assert 0 < np.abs(a - b).max() < torch.finfo(dtype).eps


def test_a_non_float_tensor_is_refused_at_import(tmp_path: Path) -> None:
    sd = fake_state_dict()
    sd["audio.fc.weight"] = sd["audio.fc.weight"].to(torch.int64)
    for path in (
        _saved(tmp_path / "ints.pt", sd),
        _tiny_safetensors(tmp_path / "ints.safetensors", torch.float32, "audio.fc.weight"),
    ):
        result = runner.invoke(app, ["weights", "import", str(path)])
        line = one_line_error(result)
        assert result.exit_code == 1
        assert "'audio.fc.weight' as int" in line and "floating point" in line
    assert not list(paths.weights_dir().glob("ints*"))


@pytest.mark.parametrize("dtype,bad_key", [(torch.float16, None), (torch.float32, "text_projection")])
def test_a_registered_file_of_the_wrong_dtype_is_refused_at_load(
    tmp_path: Path, dtype: torch.dtype, bad_key: str | None
) -> None:
    # Written straight into the weights folder, as an older audiofind or a hand copy would leave it.
    paths.weights_dir().mkdir(parents=True)
    _tiny_safetensors(paths.weights_dir() / "raw.safetensors", dtype, bad_key)
    result = runner.invoke(app, ["embed", "-t", "rain", "-w", "raw"])
    line = one_line_error(result)
    assert result.exit_code == 1 and "wrong dtype" in line
    assert ("text_projection int32 != float32" if bad_key else "float16 != float32") in line
