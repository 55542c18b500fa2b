"""The CLIP text transformer as AudioCLIP uses it: causal, pre-LayerNorm, pooled at the end-of-text token."""

from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiofind.model.config import TextConfig


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype, as CLIP does."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).to(
            x.dtype
        )


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class CausalSelfAttention(nn.Module):
    """nn.MultiheadAttention's parameters (in_proj q|k|v stacked, out_proj), run through fused causal attention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.in_proj: nn.Module | None = None  # inference may run the q|k|v projection packed (model/inference.py)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: Tensor) -> Tensor:
        b, n, w = x.shape  # (B, L, width)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias) if self.in_proj is None else self.in_proj(x)
        q, k, v = qkv.split(w, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, w // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, L, head_dim)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, w))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: Tensor) -> Tensor:
        return self.resblocks(x)


class TextEncoder(nn.Module):
    """Token ids (B, L <= context_length) -> (B, embed_dim) unnormalised embeddings.

    Its parameters sit at the top level with CLIP's names (token_embedding, transformer, ln_final, ...), as in the
    published checkpoints, so a text-only model loads the text keys as they are.
    """

    def __init__(self, cfg: TextConfig, embed_dim: int) -> None:
        super().__init__()
        self.text_cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads)
        self.ln_final = LayerNorm(cfg.width)
        self.text_dropout = nn.Dropout(0.0)  # fine-tuning sets p; identity in eval
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.width**-0.5)
        self.packed = False  # linear layers packed for inference (model/inference.py): inference only
        self.project: nn.Module | None = None  # the packed text_projection, when packed

    def train(self, mode: bool = True) -> Self:
        """As nn.Module.train, but a tower packed for inference has no trainable linear layers left and refuses."""
        if mode and self.packed:
            raise RuntimeError("This text tower is packed for inference; load it again to train it.")
        return super().train(mode)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """(B, L) int64 ids -> (B, embed_dim). L may be cut to the longest real sequence: the mask is causal."""
        assert tokens.dim() == 2 and tokens.shape[1] <= self.text_cfg.context_length, (
            f"bad token shape {tuple(tokens.shape)}"
        )
        n = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        x = self.ln_final(self.transformer(x))
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # end-of-text has the largest id
        x = self.text_dropout(x)
        return x @ self.text_projection if self.project is None else self.project(x)
