"""Tiny models beyond Linear/Conv stacks: transformers, residual BN, custom modules.

Each is a ``Problem`` (seeded model, one batch, mean-reduced loss) small enough for
per-sample reference loops on one CPU thread. A "sample" is a sequence for the
sequence models; the causal LM's loss is the mean over all ``B·T`` tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from tests.agent.problems import Problem

VOCAB, SEQ, D_MODEL = 11, 6, 8


class EncoderClassifier(nn.Module):
    """Token + position embedding, one post-LN encoder layer (GELU), mean-pool, head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Embedding(SEQ, D_MODEL)
        self.layer = nn.TransformerEncoderLayer(
            D_MODEL, 2, 16, dropout=0.0, activation="gelu", batch_first=True
        )
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, classes)

    def forward(self, ids: Tensor) -> Tensor:
        # Positions expanded to the batch: the embedding rule needs [B, T] inputs.
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        h = self.layer(self.tok(ids) + self.pos(pos))
        return self.head(self.norm(h.mean(1)))


class DropoutEncoder(nn.Module):
    """``nn.TransformerEncoderLayer`` with its default dropout 0.1, trained."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(11, 8)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.tok(ids)).mean(1))


class BroadcastPositions(EncoderClassifier):
    """The common form ``pos(arange(T))`` broadcast over the batch: the hook on
    ``pos`` sees ``T`` rows, not samples (served by the whole-model re-run)."""

    def forward(self, ids: Tensor) -> Tensor:
        pos = self.pos(torch.arange(ids.shape[1], device=ids.device))  # [T, E]
        h = self.layer(self.tok(ids) + pos)
        return self.head(self.norm(h.mean(1)))


class CausalLM(nn.Module):
    """GPT-style: raw position parameter, pre-LN causal layer, head tied to tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Parameter(0.1 * torch.randn(SEQ, D_MODEL))
        self.layer = nn.TransformerEncoderLayer(
            D_MODEL,
            2,
            16,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, VOCAB, bias=False)
        self.head.weight = self.tok.weight  # the trap: one tensor, two modules
        self.register_buffer(
            "mask", nn.Transformer.generate_square_subsequent_mask(SEQ)
        )

    def forward(self, ids: Tensor) -> Tensor:
        t = ids.shape[1]
        h = self.tok(ids) + self.pos[:t]
        h = self.layer(h, src_mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))  # [B, T, V]


class FunctionalTieLM(nn.Module):
    """Bag-of-tokens LM whose head reuses the embedding functionally (``h @ Wᵀ``).

    No module hook sees the second use: only the engine's ``Σ_n g_n = .grad``
    check at the first tracked step can find it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D_MODEL)
        self.mix = nn.Linear(D_MODEL, D_MODEL)

    def forward(self, ids: Tensor) -> Tensor:
        h = torch.tanh(self.mix(self.tok(ids)))
        return h @ self.tok.weight.t()  # [B, T, V]


class PaddedAttention(nn.Module):
    """Self-attention over padded sequences (``key_padding_mask``), mean-pooled.

    ``zero_attn=True`` adds a zero key/value (``add_zero_attn``), which the exact
    attention rule does not reproduce: that variant exercises the ``torch.func``
    fallback for attention.
    """

    def __init__(self, zero_attn: bool) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D_MODEL, padding_idx=0)
        self.attn = nn.MultiheadAttention(
            D_MODEL, 2, batch_first=True, add_zero_attn=zero_attn
        )
        self.head = nn.Linear(D_MODEL, 3)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.tok(ids)
        a, _ = self.attn(h, h, h, key_padding_mask=ids == 0, need_weights=False)
        return self.head(a.mean(1))


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus identity."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class ResCNN(nn.Module):
    """Stem conv + BN, one residual block, global average pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.block = ResBlock(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block(F.relu(self.bn(self.stem(x))))
        return self.head(h.mean((2, 3)))


class Gated(nn.Module):
    """A custom module owning raw parameters: ``(x @ w) * sigmoid(gate)``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.gate = nn.Parameter(torch.randn(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return (x @ self.w) * torch.sigmoid(self.gate)


def _encoder() -> tuple[nn.Module, Tensor, Tensor]:
    model = EncoderClassifier()
    ids = torch.randint(0, VOCAB, (4, SEQ))
    ids[:, 1] = ids[:, 3]  # repeated tokens inside each sequence
    return model, ids, torch.randint(0, 3, (4,))


def _broadcast() -> tuple[nn.Module, Tensor, Tensor]:
    model = BroadcastPositions()
    ids = torch.randint(0, VOCAB, (4, SEQ))
    return model, ids, torch.randint(0, 3, (4,))


def _causal_lm() -> tuple[nn.Module, Tensor, Tensor]:
    model = CausalLM()
    ids = torch.randint(0, VOCAB, (3, SEQ + 1))
    ids[:, 2] = ids[:, 4]
    return model, ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def _functional_tie() -> tuple[nn.Module, Tensor, Tensor]:
    model = FunctionalTieLM()
    ids = torch.randint(0, VOCAB, (4, SEQ + 1))
    return model, ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def _padded(zero_attn: bool) -> tuple[nn.Module, Tensor, Tensor]:
    model = PaddedAttention(zero_attn)
    ids = torch.randint(1, VOCAB, (4, SEQ))
    ids[0, 4:] = 0  # padding at the end of two sequences
    ids[2, 3:] = 0
    return model, ids, torch.randint(0, 3, (4,))


def _res_cnn(train: bool) -> tuple[nn.Module, Tensor, Tensor]:
    model = ResCNN()
    x = torch.randn(5, 2, 6, 6)
    with torch.no_grad():  # non-trivial running statistics
        model.train()(torch.randn(16, 2, 6, 6))
    model.train(train)
    return model, x, torch.randint(0, 3, (5,))


def _custom() -> tuple[nn.Module, Tensor, Tensor]:
    model = nn.Sequential(
        nn.Linear(6, 8), Gated(8, 8), nn.GroupNorm(2, 8), nn.GELU(), nn.Linear(8, 3)
    )
    return model, torch.randn(5, 6), torch.randint(0, 3, (5,))


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over every token of every sequence."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


ENCODER = Problem("encoder", _encoder, F.cross_entropy)
BROADCAST = Problem("broadcast_positions", _broadcast, F.cross_entropy)
CAUSAL_LM = Problem("causal_lm", _causal_lm, token_cross_entropy)
RES_CNN = Problem("res_cnn_eval", lambda: _res_cnn(False), F.cross_entropy)
RES_CNN_TRAIN = Problem("res_cnn_train", lambda: _res_cnn(True), F.cross_entropy)
CUSTOM = Problem("custom", _custom, F.cross_entropy)
PADDED = Problem("padded_attention", lambda: _padded(False), F.cross_entropy)
PADDED_VMAP = Problem("padded_attention_vmap", lambda: _padded(True), F.cross_entropy)
FUNCTIONAL_TIE = Problem("functional_tie", _functional_tie, token_cross_entropy)

#: Models with well-defined per-sample gradients (BatchNorm in eval mode).
MODELS: tuple[Problem, ...] = (
    ENCODER,
    CAUSAL_LM,
    RES_CNN,
    CUSTOM,
    FUNCTIONAL_TIE,
    PADDED,
    PADDED_VMAP,
    BROADCAST,
)
