"""The CLIP text tower in plain numpy over the memory-mapped safetensors file: a query embedded without torch.

A search runs the text tower once, on one short query, in a fresh process, so its start-up is its latency:
importing torch alone costs more than the whole query here. The safetensors file is mapped, not read, so only
the query's own rows of the 100 MB token embedding are ever touched. The arithmetic follows
audiofind/model/text.py (spec section b.3) step by step in float32; tests/test_textnp.py holds it to the torch
tower within 1e-6.
"""

import json
import mmap
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiofind.errors import WeightsError
from audiofind.model.tokenizer import tokenize_np

EPS = 1e-5  # LayerNorm, as CLIP
BATCH = 64  # captions per forward pass when many are embedded (the equality test, never a search)
# Below this many token positions a forward pass runs on one BLAS thread: waking a second one for so small a product
# costs 20x the product itself on a busy 2-core machine (1.1 s instead of 55 ms of CPU for one query, measured).
ONE_THREAD_BELOW = 512

# Each block's tensors: suffix -> shape for a tower of width w.
_BLOCK = {
    "attn.in_proj_weight": lambda w: (3 * w, w),
    "attn.in_proj_bias": lambda w: (3 * w,),
    "attn.out_proj.weight": lambda w: (w, w),
    "attn.out_proj.bias": lambda w: (w,),
    "ln_1.weight": lambda w: (w,),
    "ln_1.bias": lambda w: (w,),
    "mlp.c_fc.weight": lambda w: (4 * w, w),
    "mlp.c_fc.bias": lambda w: (4 * w,),
    "mlp.c_proj.weight": lambda w: (w, 4 * w),
    "mlp.c_proj.bias": lambda w: (w,),
    "ln_2.weight": lambda w: (w,),
    "ln_2.bias": lambda w: (w,),
}


@dataclass(frozen=True)
class Block:
    """One pre-LayerNorm residual block: causal self-attention, then a QuickGELU MLP."""

    in_w: np.ndarray  # (3W, W): q, k, v stacked, as nn.MultiheadAttention keeps them
    in_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln1: tuple[np.ndarray, np.ndarray]
    fc_w: np.ndarray
    fc_b: np.ndarray
    proj_w: np.ndarray
    proj_b: np.ndarray
    ln2: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TextTower:
    """CLIP's text transformer; load it with load_text_tower(path)."""

    token_embedding: np.ndarray  # (vocab, W), memory-mapped
    positional_embedding: np.ndarray  # (context, W)
    blocks: list[Block]
    ln_final: tuple[np.ndarray, np.ndarray]
    projection: np.ndarray  # (W, D), used as h @ P
    heads: int

    @property
    def context_length(self) -> int:
        """Longest token sequence the tower takes (77)."""
        return self.positional_embedding.shape[0]

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self.projection.shape[1]

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """(B, L) int64 ids -> (B, D) float32 unnormalised; cut to the longest sequence, pooled at end-of-text."""
        tokens = np.atleast_2d(tokens)
        eot = tokens.argmax(axis=-1)  # end-of-text has the largest id
        n = int(eot.max()) + 1  # the mask is causal: nothing after the last end-of-text matters
        x = self.token_embedding[tokens[:, :n]] + self.positional_embedding[:n]  # (B, n, W)
        mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)
        with _blas_threads(1 if x.shape[0] * n < ONE_THREAD_BELOW else None):
            for block in self.blocks:
                x = x + self._attention(_layer_norm(x, *block.ln1), block, mask)
                h = _linear(_layer_norm(x, *block.ln2), block.fc_w, block.fc_b)
                x = x + _linear(_quick_gelu(h), block.proj_w, block.proj_b)
            pooled = _layer_norm(x[np.arange(len(tokens)), eot], *self.ln_final) @ self.projection
        return np.ascontiguousarray(pooled, dtype=np.float32)

    def _attention(self, x: np.ndarray, block: Block, mask: np.ndarray) -> np.ndarray:
        b, n, w = x.shape
        d = w // self.heads
        qkv = _linear(x, block.in_w, block.in_b).reshape(b, n, 3, self.heads, d).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, n, d)
        scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(d**-0.5) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        y = (scores / scores.sum(axis=-1, keepdims=True)) @ v  # (B, heads, n, d)
        return _linear(y.transpose(0, 2, 1, 3).reshape(b, n, w), block.out_w, block.out_b)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> (B, D) float32, unnormalised, as Encoder.embed_text returns them."""
        tokens = tokenize_np(list(texts), self.context_length)
        out = np.zeros((len(tokens), self.dim), dtype=np.float32)
        # Captions of similar length share a pass, so few positions are computed past a caption's end.
        order = np.argsort(tokens.argmax(axis=-1), kind="stable")
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            out[rows] = self.encode(tokens[rows])
        return out


@contextmanager
def _blas_threads(limit: int | None) -> Iterator[None]:
    """Run BLAS on at most limit threads inside (None: as configured)."""
    if limit is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limit, user_api="blas"):
        yield


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    # One 2-D product for the whole batch; weight is (out, in) as torch keeps it, and BLAS reads the transpose as is.
    return (x.reshape(-1, x.shape[-1]) @ weight.T + bias).reshape(*x.shape[:-1], weight.shape[0])


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    rstd = 1 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + np.float32(EPS))
    return centred * rstd * weight + bias


def _quick_gelu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp overflows to inf for very negative x: the sigmoid is then 0, as it should be
        return x / (1 + np.exp(np.float32(-1.702) * x))


def read_tensors(path: Path, keys: Callable[[list[str]], list[str]]) -> dict[str, np.ndarray]:
    """The float32 tensors a safetensors file holds under the keys chosen from its own, as read-only arrays over a
    memory map of the file (safetensors' numpy API would copy all 250 MB of the text tower)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= os.fstat(f.fileno()).st_size - 8:
                raise ValueError("its header length is impossible")
            header = json.loads(f.read(size))
            if not isinstance(header, dict):
                raise ValueError("its header is not a table of tensors")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file: {e}.") from e
    wanted = keys([k for k in header if k != "__metadata__"])
    if missing := [k for k in wanted if k not in header]:
        raise WeightsError(f"{path} does not fit the AudioCLIP text tower: missing {', '.join(missing[:3])}.")
    out = {}
    for key in wanted:
        entry = header[key]
        if not isinstance(entry, dict) or entry.get("dtype") != "F32":
            dtype = entry.get("dtype") if isinstance(entry, dict) else None
            raise WeightsError(f"{path} holds {key!r} as {dtype}, not float32; audiofind weights import converts it.")
        try:
            (start, end), shape = entry["data_offsets"], tuple(int(n) for n in entry["shape"])
            count = int(np.prod(shape))
            if end - start != 4 * count or not 0 <= start <= end <= len(mapped) - 8 - size:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path} is damaged: {key!r} does not lie where its header says.") from None
        out[key] = np.frombuffer(mapped, np.float32, count, 8 + size + start).reshape(shape)
    return out


def text_keys(keys: list[str]) -> list[str]:
    """Every key the text tower needs, for as many residual blocks as the file's keys have."""
    layers = len({k.split(".")[2] for k in keys if k.startswith("transformer.resblocks.")})
    blocks = [f"transformer.resblocks.{i}.{suffix}" for i in range(layers) for suffix in _BLOCK]
    return [
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        "ln_final.bias",
        "text_projection",
        *blocks,
    ]


def load_text_tower(path: Path, heads: int | None = None) -> TextTower:
    """The text tower of a safetensors checkpoint; heads defaults to CLIP's rule, one per 64 channels."""
    t = read_tensors(path, text_keys)
    width = t["ln_final.weight"].size
    rows = lambda key: t[key].shape[0] if t[key].ndim == 2 else -1
    layers = sum(k.startswith("transformer.") for k in t) // len(_BLOCK)
    expected = {k: _BLOCK[k.split(".", 3)[3]](width) for k in t if k.startswith("transformer.")}
    expected |= {
        "token_embedding.weight": (rows("token_embedding.weight"), width),
        "ln_final.weight": (width,),
        "positional_embedding": (rows("positional_embedding"), width),
        "ln_final.bias": (width,),
        "text_projection": (width, t["text_projection"].shape[-1] if t["text_projection"].ndim == 2 else -1),
    }
    if wrong := [f"{k} {t[k].shape} != {shape}" for k, shape in expected.items() if t[k].shape != shape]:
        raise WeightsError(f"{path} does not fit the AudioCLIP text tower: wrong shape {', '.join(wrong[:2])}.")
    heads = heads or max(1, width // 64)
    if layers == 0 or width % heads:
        raise WeightsError(
            f"{path} does not fit the AudioCLIP text tower: {layers} blocks of width {width}, {heads} heads."
        )

    def block(i: int) -> Block:
        get = lambda suffix: t[f"transformer.resblocks.{i}.{suffix}"]
        return Block(
            get("attn.in_proj_weight"),
            get("attn.in_proj_bias"),
            get("attn.out_proj.weight"),
            get("attn.out_proj.bias"),
            (get("ln_1.weight"), get("ln_1.bias")),
            get("mlp.c_fc.weight"),
            get("mlp.c_fc.bias"),
            get("mlp.c_proj.weight"),
            get("mlp.c_proj.bias"),
            (get("ln_2.weight"), get("ln_2.bias")),
        )

    return TextTower(
        t["token_embedding.weight"],
        t["positional_embedding"],
        [block(i) for i in range(layers)],
        (t["ln_final.weight"], t["ln_final.bias"]),
        t["text_projection"],
        heads,
    )
