"""RoBERTa, LAION-CLAP's text tower: post-LayerNorm transformer encoder, pooled as tanh(Dense(h[<s>])).

Module and parameter names are Hugging Face's RobertaModel's (text_branch.* in the CLAP state dict), so the
published weights load as they are.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiofind.model.clap.config import RobertaConfig


def position_ids(ids: Tensor, pad_id: int) -> Tensor:
    """(B, L) -> (B, L): 1-based index among the non-pad tokens, offset by pad_id; pads get pad_id itself.

    As Hugging Face's create_position_ids_from_input_ids: counted from the ids, not the attention mask.
    """
    real = (ids != pad_id).long()
    return torch.cumsum(real, dim=1) * real + pad_id


class Embeddings(nn.Module):
    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.pad_id = cfg.pad_id
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.width)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.width)
        self.LayerNorm = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def forward(self, ids: Tensor) -> Tensor:
        """(B, L) -> (B, L, width); every token has type 0, as the reference passes no token_type_ids."""
        x = self.word_embeddings(ids) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x + self.position_embeddings(position_ids(ids, self.pad_id)))


class SelfAttention(nn.Module):
    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.width, cfg.width)
        self.key = nn.Linear(cfg.width, cfg.width)
        self.value = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """(B, L, width), additive key mask (B, 1, 1, L) -> (B, L, width)."""
        b, n, w = x.shape
        q, k, v = (
            f(x).reshape(b, n, self.heads, w // self.heads).transpose(1, 2) for f in (self.query, self.key, self.value)
        )
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, heads, L, head_dim)
        return y.transpose(1, 2).reshape(b, n, w)


class DenseNorm(nn.Module):
    """Dense, then LayerNorm of it plus the residual: the post-LN step after attention and after the MLP."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = DenseNorm(cfg.width, cfg.width, cfg.eps)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return self.output(self.self(x, bias), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.width, cfg.mlp_width)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU


class Layer(nn.Module):
    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseNorm(cfg.mlp_width, cfg.width, cfg.eps)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = self.attention(x, bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        for layer in self.layer:
            x = layer(x, bias)
        return x


class Pooler(nn.Module):
    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.width, cfg.width)

    def forward(self, h: Tensor) -> Tensor:
        """(B, L, width) -> (B, width): tanh(Dense(h[<s>]))."""
        return torch.tanh(self.dense(h[:, 0]))


class Roberta(nn.Module):
    """(B, L) right-padded token ids and attention mask -> (B, width) pooled output."""

    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.pooler = Pooler(cfg)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        assert ids.shape == mask.shape and ids.dim() == 2, f"ids {tuple(ids.shape)} and mask {tuple(mask.shape)}"
        assert ids.shape[1] <= self.cfg.max_positions - self.cfg.pad_id - 1, "more tokens than learned positions"
        # Texts are right-padded, only h[<s>] is pooled and padded keys are masked out: the columns after the
        # longest text change nothing, so they are not computed.
        n = max(int(mask.sum(dim=1).max()), 1)
        ids, mask = ids[:, :n], mask[:, :n]
        dtype = self.embeddings.word_embeddings.weight.dtype
        # The most negative finite value, as Hugging Face adds: a row with no real key stays finite (not NaN).
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask == 0, torch.finfo(dtype).min)
        return self.pooler(self.encoder(self.embeddings(ids), bias[:, None, None, :]))
