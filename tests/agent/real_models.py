"""Models nobody here wrote, from tiny configs in code (no downloads), with references.

Each ``Case`` builds a seeded model and one batch, and runs the model the way its
library's users do (Hugging Face models with keyword tensors and ``labels=``).
``reference`` computes per-sample gradients by one forward/backward per sample,
the brute-force truth the engine's readings are compared with.

torchvision's wheel on this machine is a CUDA build whose C ops cannot load into
the CPU torch (``operator torchvision::nms does not exist`` on import, which
breaks timm and transformers, both importing torchvision). ``import_torchvision``
declares the two op schemas its import registers fake kernels for, so that its
pure-Python models import; no torchvision op is used here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from tests.agent.reference import Data

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def import_torchvision() -> Any:
    """``torchvision``, importable even when its compiled ops do not load."""
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
        for op in ("nms", "qnms"):
            lib.define(
                f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            )
        _KEEP.append(lib)
        import torchvision
    return torchvision


_KEEP: list[Any] = []

#: What a case's forward returns: the mean loss of the batch and its outputs.
Forward = Callable[[nn.Module, dict[str, Tensor]], Tensor]


@dataclass(eq=False)
class Case:
    """A real model, one batch of keyword tensors, and how it is called.

    ``forward(model, batch)`` returns the batch's mean loss (a mean of the
    samples' losses); ``batch_axis`` is where each batch tensor's samples are.
    """

    name: str
    build: Callable[[], tuple[nn.Module, dict[str, Tensor]]]
    forward: Forward
    batch_axis: dict[str, int] = field(default_factory=dict)
    slow: bool = False
    #: Relative tolerance of the scalar readings (float32 through deep nets).
    rtol: float = 1e-4
    #: Batch tensors shared by all samples (passed whole to each sample).
    shared: tuple[str, ...] = ()

    def make(self, seed: int = 0) -> tuple[nn.Module, dict[str, Tensor]]:
        """Fresh model and batch, identical for equal seeds."""
        torch.manual_seed(seed)
        return self.build()

    def sample(self, batch: dict[str, Tensor], i: int) -> dict[str, Tensor]:
        """Sample ``i`` alone, a batch of one."""
        out = {}
        for k, v in batch.items():
            axis = self.batch_axis.get(k, 0)
            out[k] = v if k in self.shared else v.narrow(axis, i, 1)
        return out

    def size(self, batch: dict[str, Tensor]) -> int:
        """The number of samples."""
        k, v = next((k, v) for k, v in batch.items() if k not in self.shared)
        return v.shape[self.batch_axis.get(k, 0)]

    def __str__(self) -> str:
        return self.name


def reference(case: Case, lr: float = 0.1, seed: int = 0) -> Data:
    """Per-sample gradients by a loop over samples, float64 (no curvature)."""
    model, batch = case.make(seed)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, ps = [n for n, _ in params], [p for _, p in params]
    per: dict[str, list[Tensor]] = {n: [] for n in names}
    for i in range(case.size(batch)):
        grads = torch.autograd.grad(
            case.forward(model, case.sample(batch, i)), ps, allow_unused=True
        )
        for (n, p), g in zip(params, grads, strict=True):
            per[n].append(torch.zeros_like(p) if g is None else g.double())
    loss = case.forward(model, batch)
    grads = torch.autograd.grad(loss, ps, allow_unused=True)
    return Data(
        names=names,
        theta={n: p.detach().double() for n, p in params},
        per_sample={n: torch.stack(v).double() for n, v in per.items()},
        grad={
            n: (torch.zeros_like(p) if g is None else g).double()
            for (n, p), g in zip(params, grads, strict=True)
        },
        hess_diag={n: torch.full(p.shape, float("nan")) for n, p in params},
        loss=float(loss.detach()),
        lrs=dict.fromkeys(names, lr),
    )


# -- models -------------------------------------------------------------------------
def _classify(out: Any, y: Tensor) -> Tensor:
    logits = out.logits if hasattr(out, "logits") else out
    return F.cross_entropy(logits, y)


def _call(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return _classify(model(batch["x"]), batch["y"])


def _hf(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The Hugging Face way (what ``Trainer`` does): keywords, loss from labels."""
    out = model(**batch)
    loss: Tensor = out.loss
    return loss


def gpt2(
    dropout: float = 0.0, batch: int = 3, seq: int = 6, positions: bool = False
) -> Callable[[], Any]:
    """A 2-layer GPT-2 LM (d 16), tied head, causal LM loss via ``labels``.

    With ``positions``, ``position_ids`` ``[1, T]`` (shared by the samples) is
    passed first, before ``input_ids``.
    """

    def build() -> tuple[nn.Module, dict[str, Tensor]]:
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(
            vocab_size=23,
            n_positions=16,
            n_embd=16,
            n_layer=2,
            n_head=2,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
        )
        model = GPT2LMHeadModel(cfg)
        ids = torch.randint(0, 23, (batch, seq))
        ids[:, 1] = ids[:, 3]  # repeated tokens
        shared = {"position_ids": torch.arange(seq)[None]} if positions else {}
        return model, {
            **shared,
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": ids.clone(),
        }

    return build


def bert(
    dropout: float = 0.0, batch: int = 3, seq: int = 6, padded: bool = False
) -> Callable[[], Any]:
    """A 2-layer BERT classifier (d 16), token types, labels in the call.

    With ``padded``, two sequences end in padding (``attention_mask`` zeros).
    """

    def build() -> tuple[nn.Module, dict[str, Tensor]]:
        from transformers import BertConfig, BertForSequenceClassification

        cfg = BertConfig(
            vocab_size=23,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            num_labels=3,
        )
        model = BertForSequenceClassification(cfg)
        ids = torch.randint(0, 23, (batch, seq))
        types = torch.zeros_like(ids)
        types[:, seq // 2 :] = 1
        mask = torch.ones_like(ids)
        if padded:
            mask[0, 4:] = 0
            mask[2, 3:] = 0
        return model, {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": types,
            "labels": torch.randint(0, 3, (batch,)),
        }

    return build


class SeqFirstEncoder(nn.Module):
    """Tokens ``[B, T]`` through ``nn.TransformerEncoder`` in its default layout.

    PyTorch's default ``batch_first=False``: the encoder's layers see ``[T, B, d]``.
    """

    def __init__(self, batch_first: bool = False, lstm: bool = False) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.tok = nn.Embedding(13, 8)
        self.pos = nn.Embedding(16, 8)
        layer = nn.TransformerEncoderLayer(
            8, 2, 16, dropout=0.0, batch_first=batch_first
        )
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: Tensor) -> Tensor:
        pos = self.pos(torch.arange(ids.shape[1], device=ids.device))
        h = self.tok(ids) + pos  # [B, T, d]
        if not self.batch_first:
            h = self.enc(h.transpose(0, 1)).transpose(0, 1)
        else:
            h = self.enc(h)
        return self.head(h.mean(1))


def encoder(batch_first: bool, batch: int = 4, seq: int = 4) -> Callable[[], Any]:
    """``SeqFirstEncoder``; the default sequence length equals the batch size."""

    def build() -> tuple[nn.Module, dict[str, Tensor]]:
        model = SeqFirstEncoder(batch_first)
        return model, {
            "x": torch.randint(0, 13, (batch, seq)),
            "y": torch.randint(0, 3, (batch,)),
        }

    return build


class LSTMClassifier(nn.Module):
    """Embedding, ``nn.LSTM`` (sequence-first by default), last state, head.

    With ``bidirectional``, an ``nn.GRU`` both ways (no rule of its own: the
    general fallback), its two final states concatenated.
    """

    def __init__(self, batch_first: bool = False, bidirectional: bool = False):
        super().__init__()
        self.batch_first = batch_first
        self.tok = nn.Embedding(13, 6)
        self.rnn: nn.RNNBase = (
            nn.GRU(6, 8, batch_first=batch_first, bidirectional=True)
            if bidirectional
            else nn.LSTM(6, 8, batch_first=batch_first)
        )
        self.head = nn.Linear(16 if bidirectional else 8, 3)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.tok(ids)  # [B, T, d]
        if not self.batch_first:
            h = h.transpose(0, 1)
        _, state = self.rnn(h)
        h_n = state[0] if isinstance(state, tuple) else state
        last = torch.cat([h_n[-2], h_n[-1]], 1) if h_n.shape[0] == 2 else h_n[-1]
        return self.head(last)


def lstm(
    batch: int = 4, seq: int = 4, bidirectional: bool = False
) -> Callable[[], Any]:
    """``LSTMClassifier`` in the default layout, ``T == B``."""

    def build() -> tuple[nn.Module, dict[str, Tensor]]:
        return LSTMClassifier(bidirectional=bidirectional), {
            "x": torch.randint(0, 13, (batch, seq)),
            "y": torch.randint(0, 3, (batch,)),
        }

    return build


def resnet18(norm: str, batch: int = 3) -> Callable[[], Any]:
    """torchvision's ResNet-18 with GroupNorm or BatchNorm (eval/train), 3×16×16."""

    def build() -> tuple[nn.Module, dict[str, Tensor]]:
        tv = import_torchvision()
        layer: Any = (lambda c: nn.GroupNorm(4, c)) if norm == "gn" else nn.BatchNorm2d
        model = tv.models.resnet18(num_classes=3, norm_layer=layer)
        if norm != "gn":
            with torch.no_grad():  # non-trivial running statistics
                model.train()(torch.randn(8, 3, 16, 16))
            model.train(norm == "bn_train")
        return model, {
            "x": torch.randn(batch, 3, 16, 16),
            "y": torch.randint(0, 3, (batch,)),
        }

    return build


def vit(batch: int = 3) -> Callable[[], Any]:
    """timm's VisionTransformer, 2 blocks, d 16, 16 px images in 8 px patches."""

    def build() -> tuple[nn.Module, dict[str, Tensor]]:
        import_torchvision()
        from timm.models.vision_transformer import VisionTransformer

        model = VisionTransformer(
            img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3
        )
        return model, {
            "x": torch.randn(batch, 3, 16, 16),
            "y": torch.randint(0, 3, (batch,)),
        }

    return build


def convnext(batch: int = 3) -> Callable[[], Any]:
    """timm's ConvNeXt, four stages of one block (8-32 channels), 32 px images."""

    def build() -> tuple[nn.Module, dict[str, Tensor]]:
        import_torchvision()
        from timm.models.convnext import ConvNeXt

        model = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=3)
        return model, {
            "x": torch.randn(batch, 3, 32, 32),
            "y": torch.randint(0, 3, (batch,)),
        }

    return build


GPT2 = Case("gpt2", gpt2(), _hf)
GPT2_POSITIONS = Case(
    "gpt2_shared_positions", gpt2(positions=True), _hf, shared=("position_ids",)
)
BERT = Case("bert", bert(), _hf)
BERT_PADDED = Case("bert_padded", bert(padded=True), _hf)
ENCODER_SEQ_FIRST = Case("encoder_seq_first", encoder(False), _call)
ENCODER_BATCH_FIRST = Case("encoder_batch_first", encoder(True), _call)
LSTM = Case("lstm", lstm(), _call)
GRU_BIDIRECTIONAL = Case("gru_bidirectional", lstm(bidirectional=True), _call)
RESNET_GN = Case("resnet18_gn", resnet18("gn"), _call, slow=True)
# 20 layers of float32 round-off in the per-sample gradients of both sides,
# amplified by the inner test's variance (1.5e-4 on layer2.0.bn1.weight).
RESNET_BN_EVAL = Case(
    "resnet18_bn_eval", resnet18("bn_eval"), _call, slow=True, rtol=1e-3
)
RESNET_BN_TRAIN = Case("resnet18_bn_train", resnet18("bn_train"), _call)
VIT = Case("vit", vit(), _call)
CONVNEXT = Case("convnext", convnext(), _call)

CASES = (
    RESNET_GN,
    RESNET_BN_EVAL,
    RESNET_BN_TRAIN,
    GPT2,
    GPT2_POSITIONS,
    BERT,
    BERT_PADDED,
    VIT,
    CONVNEXT,
    LSTM,
    GRU_BIDIRECTIONAL,
    ENCODER_SEQ_FIRST,
    ENCODER_BATCH_FIRST,
)
