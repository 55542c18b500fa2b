"""CLAP's text tower (RoBERTa, pooler, projection) in plain numpy over the memory-mapped safetensors file.

As audiofind/model/textnp.py does for AudioCLIP: a search embeds one short query in a fresh process, where importing
torch would cost more than the query. Only the query's rows of the 154 MB word embedding are read. The arithmetic
follows roberta.py and model.py step by step in float32; tests/test_clap_textnp.py holds the two within 1e-5.
"""

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from audiofind.errors import WeightsError
from audiofind.model.textnp import read_tensors

BATCH = 64  # texts per forward pass, grouped by length so few padded positions are computed
# Below this many token positions a pass runs on one BLAS thread: on a busy 2-core machine a second spinning thread
# makes a small product many times slower (as measured for audiofind/model/textnp.py; here 0.77 s against 5.2 s for the
# fixture's six captions one at a time).
ONE_THREAD_BELOW = 512
ERF_STEP = 1 / 256  # spacing of the tabulated Taylor series of erf (a power of 2: grid points are exact)
ERF_TERMS = 5  # the first term left out is below (1/512)^6 / 6! |H_5(x) exp(-x²)| < 1e-18
ERF_MAX = 6.0  # erf(6) = 1 - 2e-17 is 1.0 in float64; beyond, erf is +-1

Dense = tuple[np.ndarray, np.ndarray]  # (weight (out, in) as torch keeps it, bias (out,))


@functools.lru_cache(maxsize=1)
def _erf_taylor() -> np.ndarray:
    """(ERF_TERMS + 1, 1537): Taylor coefficients of erf around x0 = 0, 1/256, ..., 6, from math.erf.

    The n-th derivative of erf is 2/sqrt(pi) (-1)^(n-1) H_{n-1}(x0) exp(-x0²), H the physicists' Hermite
    polynomials.
    """
    x0 = np.arange(round(ERF_MAX / ERF_STEP) + 1) * ERF_STEP
    coef = np.empty((ERF_TERMS + 1, len(x0)))
    coef[0] = [math.erf(v) for v in x0]
    slope = 2 / math.sqrt(math.pi) * np.exp(-(x0**2))
    h_prev, h = np.zeros_like(x0), np.ones_like(x0)  # H_{n-2}, H_{n-1}
    for n in range(1, ERF_TERMS + 1):
        coef[n] = (-1) ** (n - 1) * slope * h / math.factorial(n)
        h_prev, h = h, 2 * x0 * h - 2 * (n - 1) * h_prev  # H_n = 2x H_{n-1} - 2(n-1) H_{n-2}
    return coef


def erf(x: np.ndarray) -> np.ndarray:
    """The error function in float64, elementwise: within 2e-16 of math.erf (tests/test_clap_textnp.py).

    The Taylor series of erf around the nearest multiple of 1/256, its coefficients tabulated (_erf_taylor).
    """
    x = np.asarray(x, dtype=np.float64)
    a = np.fmin(np.abs(x), ERF_MAX)  # fmin: a NaN becomes 6 here, so it indexes the table, and is restored below
    i = np.rint(a * (1 / ERF_STEP)).astype(np.intp)
    d = a - i * ERF_STEP  # |d| <= 1/512
    coef = _erf_taylor()
    y = coef[ERF_TERMS][i]
    for n in range(ERF_TERMS - 1, -1, -1):  # Horner
        y = y * d + coef[n][i]
    y = np.copysign(y, x)
    y[np.isnan(x)] = np.nan
    return y


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x Phi(x) = x/2 (1 + erf(x / sqrt 2)), computed in float64 and returned in x's dtype."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + erf(x64 * math.sqrt(0.5)))).astype(x.dtype)


@dataclass(frozen=True)
class Layer:
    """One post-LayerNorm encoder layer: self-attention, add & norm, GELU MLP, add & norm."""

    query: Dense
    key: Dense
    value: Dense
    attention_out: Dense
    attention_norm: Dense
    intermediate: Dense
    output: Dense
    output_norm: Dense


@dataclass(frozen=True)
class RobertaTower:
    """RoBERTa + pooler + projection; load it with load_text_tower(path)."""

    word_embeddings: np.ndarray  # (vocab, W), memory-mapped
    position_embeddings: np.ndarray  # (max_positions, W)
    token_type: np.ndarray  # (W,): type 0, the only one the reference uses
    embedding_norm: Dense
    layers: list[Layer]
    pooler: Dense
    projection: tuple[Dense, Dense]  # Linear-ReLU-Linear
    heads: int
    pad_id: int = 1
    eps: float = 1e-5

    @property
    def dim(self) -> int:
        """Embedding size (512)."""
        return self.projection[1][0].shape[0]

    def embed_text(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, L) ids and attention mask from bpe.BPETokenizer.encode -> (B, dim) float32 unit vectors."""
        ids, mask = np.atleast_2d(ids), np.atleast_2d(mask)
        lengths = mask.sum(axis=1)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            n = max(int(lengths[rows].max()), 1)  # right-padded: columns past the longest text change nothing
            with threadpool_limits(1 if len(rows) * n < ONE_THREAD_BELOW else None, user_api="blas"):
                out[rows] = self.encode(ids[rows, :n], mask[rows, :n])
        return out

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, n) -> (B, dim) unit vectors, over all n columns."""
        real = ids != self.pad_id
        positions = np.cumsum(real, axis=1) * real + self.pad_id  # RoBERTa's, counted from the ids as torch does
        x = self.word_embeddings[ids] + self.token_type + self.position_embeddings[positions]  # (B, n, W)
        x = self._norm(x, self.embedding_norm)
        bias = np.where(mask[:, None, None, :] != 0, 0, np.finfo(np.float32).min).astype(np.float32)
        for layer in self.layers:
            x = self._norm(_linear(self._attention(x, layer, bias), layer.attention_out) + x, layer.attention_norm)
            h = gelu(_linear(x, layer.intermediate))
            x = self._norm(_linear(h, layer.output) + x, layer.output_norm)
        pooled = np.tanh(_linear(x[:, 0], self.pooler))
        z = _linear(np.maximum(_linear(pooled, self.projection[0]), 0), self.projection[1])
        return (z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)).astype(np.float32)

    def _attention(self, x: np.ndarray, layer: Layer, bias: np.ndarray) -> np.ndarray:
        b, n, w = x.shape
        d = w // self.heads
        q, k, v = (
            _linear(x, p).reshape(b, n, self.heads, d).transpose(0, 2, 1, 3)
            for p in (layer.query, layer.key, layer.value)
        )
        scores = q @ k.transpose(0, 1, 3, 2) * np.float32(d**-0.5) + bias  # (B, heads, n, n)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        y = (scores / scores.sum(axis=-1, keepdims=True)) @ v  # (B, heads, n, d)
        return y.transpose(0, 2, 1, 3).reshape(b, n, w)

    def _norm(self, x: np.ndarray, p: Dense) -> np.ndarray:
        centred = x - x.mean(axis=-1, keepdims=True)
        rstd = 1 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + np.float32(self.eps))
        return centred * rstd * p[0] + p[1]


def _linear(x: np.ndarray, p: Dense) -> np.ndarray:
    # One 2-D product for the whole batch; the weight is (out, in) as torch keeps it.
    return (x.reshape(-1, x.shape[-1]) @ p[0].T + p[1]).reshape(*x.shape[:-1], p[0].shape[0])


LAYER_KEYS = {  # Layer field -> key inside text_branch.encoder.layer.<i>. (each .weight and .bias)
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "output_norm": "output.LayerNorm",
}
EMBEDDINGS = "text_branch.embeddings."
OTHER_KEYS = [
    *(EMBEDDINGS + k for k in ("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight")),
    *(
        f"{m}.{p}"
        for m in (EMBEDDINGS + "LayerNorm", "text_branch.pooler.dense", "text_projection.0", "text_projection.2")
        for p in ("weight", "bias")
    ),
]


def text_keys(path: Path) -> Callable[[list[str]], list[str]]:
    """The chooser read_tensors takes: every key the tower needs, for as many layers as the file has; a file that
    lacks one is refused."""

    def choose(keys: list[str]) -> list[str]:
        layers = len({k.split(".")[3] for k in keys if k.startswith("text_branch.encoder.layer.")})
        wanted = OTHER_KEYS + [
            f"text_branch.encoder.layer.{i}.{m}.{p}"
            for i in range(layers)
            for m in LAYER_KEYS.values()
            for p in ("weight", "bias")
        ]
        missing = [k for k in wanted if k not in keys] if layers else ["text_branch.encoder.layer.0.*"]
        if missing:
            raise WeightsError(f"{path} does not fit the CLAP text tower: missing {', '.join(missing[:3])}.")
        return wanted

    return choose


def load_text_tower(path: Path, heads: int | None = None) -> RobertaTower:
    """The text tower of a safetensors file with CLAP's inference keys; heads defaults to one per 64 channels."""
    return tower_from_tensors(read_tensors(path, text_keys(path)), heads, str(path))


def tower_from_tensors(t: dict[str, np.ndarray], heads: int | None = None, source: str = "tensors") -> RobertaTower:
    """The tower over already-read float32 arrays under CLAP's keys (shared, not copied)."""
    w = t[EMBEDDINGS + "LayerNorm.weight"].shape[0]
    m = t["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0]
    d = t["text_projection.2.weight"].shape[0]
    heads = heads or max(1, w // 64)
    layers = len({k.split(".")[3] for k in t if k.startswith("text_branch.encoder.layer.")})
    shapes = {
        "attention.self.query": (w, w),
        "attention.self.key": (w, w),
        "attention.self.value": (w, w),
        "attention.output.dense": (w, w),
        "attention.output.LayerNorm": (w,),
        "intermediate.dense": (m, w),
        "output.dense": (w, m),
        "output.LayerNorm": (w,),
    }
    expected = {f"text_branch.encoder.layer.{i}.{k}.weight": s for i in range(layers) for k, s in shapes.items()}
    expected |= {
        EMBEDDINGS + "word_embeddings.weight": (-1, w),
        EMBEDDINGS + "position_embeddings.weight": (-1, w),
        EMBEDDINGS + "token_type_embeddings.weight": (-1, w),
        "text_branch.pooler.dense.weight": (w, w),
        "text_projection.0.weight": (d, w),
        "text_projection.2.weight": (d, d),
        EMBEDDINGS + "LayerNorm.weight": (w,),
    }
    expected |= {k[: -len("weight")] + "bias": (s[0],) for k, s in list(expected.items()) if "_embeddings." not in k}
    wrong = [
        f"{k} {t[k].shape} != {s}"
        for k, s in expected.items()
        if len(t[k].shape) != len(s) or any(a != b for a, b in zip(t[k].shape, s) if b != -1)
    ]
    if wrong or w % heads:
        why = f"wrong shape {', '.join(wrong[:2])}" if wrong else f"width {w} is not a multiple of {heads} heads"
        raise WeightsError(f"{source} does not fit the CLAP text tower: {why}.")

    def dense(key: str) -> Dense:
        return t[f"{key}.weight"], t[f"{key}.bias"]

    def layer(i: int) -> Layer:
        return Layer(**{f: dense(f"text_branch.encoder.layer.{i}.{m}") for f, m in LAYER_KEYS.items()})

    return RobertaTower(
        t[EMBEDDINGS + "word_embeddings.weight"],
        t[EMBEDDINGS + "position_embeddings.weight"],
        t[EMBEDDINGS + "token_type_embeddings.weight"][0],
        dense(EMBEDDINGS + "LayerNorm"),
        [layer(i) for i in range(layers)],
        dense("text_branch.pooler.dense"),
        (dense("text_projection.0"), dense("text_projection.2")),
        heads,
    )
