"""The Hugging Face Trainer callback reads like the hand-written loop.

A tiny BERT classifier from a config (no download); the hand-written loop replays
the batches the Trainer fed the model, from the same initial weights, with the
Trainer's optimizer, schedule and clipping (``max_grad_norm=1.0``).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from glasscockpit.agent.instruments import PRESETS
from tests.agent.integrations.loop import (
    NAMES,
    assert_readings_equal,
    epoch_metrics,
    hand_written,
    instruments,
    readings_and_errors,
)

transformers = pytest.importorskip("transformers")
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

STEPS = 3
ALL = [c.name for c in PRESETS["full"]]
BATCH = 4


def model() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config)


class Data(torch.utils.data.Dataset[dict[str, Tensor]]):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(1, 40, (n, 8), generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def train(tmp_path, accumulate: int = 1, names=NAMES, **args: Any):
    from glasscockpit.agent.integrations.transformers import GlasscockpitCallback

    net = model()
    start = copy.deepcopy(net)
    seen: list[dict[str, Tensor]] = []

    def record(module, a, kwargs) -> None:
        if module.training and torch.is_grad_enabled():
            seen.append(
                {k: v.clone() for k, v in kwargs.items() if k != "num_items_in_batch"}
            )

    net.register_forward_pre_hook(record, with_kwargs=True)
    callback = GlasscockpitCallback(
        run="hf", server=None, instruments=instruments(names), budget=None
    )
    targs = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=accumulate,
        max_steps=STEPS,
        learning_rate=1e-2,
        seed=0,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
        eval_strategy="steps",
        eval_steps=STEPS,
        **args,
    )
    data = Data(BATCH * STEPS * accumulate)
    trainer = transformers.Trainer(
        model=net,
        args=targs,
        train_dataset=data,
        eval_dataset=Data(BATCH),
        callbacks=[callback],
        compute_metrics=accuracy,
    )
    trainer.train()
    return start, seen, trainer, callback.cockpit


def accuracy(pred: Any) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def loss_fn(
    model: nn.Module, batch: dict[str, Tensor], _: Any
) -> tuple[Tensor, Tensor]:
    out = model(**batch)
    losses = F.cross_entropy(out.logits, batch["labels"], reduction="none")
    return out.loss, losses


def replay(start, seen, trainer, accumulate: int, clip: float | None, names=NAMES):
    # The Trainer's two groups: with and without weight decay (both 0 here).
    decay = set(trainer.get_decay_parameter_names(start))
    named = list(start.named_parameters())
    groups = [
        {"params": [p for n, p in named if n in decay]},
        {"params": [p for n, p in named if n not in decay]},
    ]
    opt = torch.optim.AdamW(
        groups,
        lr=trainer.args.learning_rate,
        betas=(trainer.args.adam_beta1, trainer.args.adam_beta2),
        eps=trainer.args.adam_epsilon,
        weight_decay=0.0,
    )
    schedule = transformers.get_linear_schedule_with_warmup(opt, 0, STEPS)
    batches = [(b, None) for b in seen]
    return hand_written(
        start, opt, batches, loss_fn, accumulate=accumulate, clip=clip,
        scheduler=schedule, mean=not trainer.model_accepts_loss_kwargs, names=names,
    )  # fmt: skip


@pytest.mark.parametrize("accumulate", [1, 2])
def test_trainer_reads_like_the_hand_written_loop(tmp_path, accumulate, torch_threads):
    # Without accumulation the step opens with the loss graph: curvature too.
    names = ALL if accumulate == 1 else NAMES
    start, seen, trainer, cockpit = train(tmp_path, accumulate, names)
    assert len(seen) == STEPS * accumulate
    # BERT takes ``num_items_in_batch``: the Trainer sums the micro-batches'
    # mean losses (and logs the sum), and the replay does the same.
    want, want_errors = replay(start, seen, trainer, accumulate, 1.0, names)
    got, errors = readings_and_errors(cockpit)
    assert errors == want_errors  # notes, and TIC's refusal of BERT's loss
    readable = [n for n in names if want[0].get(n) is not None]
    assert set(names) - set(readable) <= {"tic_diag"}
    assert_readings_equal(got, want, [0], readable, rtol=1e-5)
    # Later steps follow the two runs' round-off (the attention's key bias has a
    # gradient of round-off only): the network's totals.
    assert_readings_equal(
        got, want, range(1, STEPS - 1), readable, rtol=1e-4, totals=True
    )
    # The Trainer logs the unclipped norm; grad_norm reads it too.
    logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert float(got[0]["grad_norm"]["total"]) == pytest.approx(logged[0], rel=1e-5)
    config = cockpit.hello.meta["config"]
    assert config["max_grad_norm"] == 1.0
    assert config["gradient_accumulation_steps"] == accumulate
    assert config["optimizer"] == "AdamW"
    assert config["model_config"]["hidden_size"] == 16
    # The Trainer's logged losses and the evaluation's accuracy.
    epoch = epoch_metrics(cockpit)
    assert "valid" in epoch["epoch_loss"] and "train" in epoch["epoch_loss"]
    assert 0.0 <= epoch["epoch_accuracy"]["valid"] <= 1.0


def test_bf16_reads_like_the_autocast_replay(tmp_path, torch_threads) -> None:
    names = ["loss", "grad_norm", "norm_test", "inner_test", "grad_hist_1d", "alpha"]
    start, seen, trainer, cockpit = train(tmp_path, 1, names, bf16=True)
    assert cockpit.hello.meta["config"]["bf16"] is True

    def autocast_loss(model, batch, _):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_fn(model, batch, _)

    decay = set(trainer.get_decay_parameter_names(start))
    named = list(start.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if n in decay]},
            {"params": [p for n, p in named if n not in decay]},
        ],
        lr=trainer.args.learning_rate,
        weight_decay=0.0,
    )
    want, want_errors = hand_written(
        start, opt, [(b, None) for b in seen], autocast_loss, clip=1.0, names=names,
        scheduler=transformers.get_linear_schedule_with_warmup(opt, 0, STEPS),
    )  # fmt: skip
    got, errors = readings_and_errors(cockpit)
    assert errors == want_errors == []
    assert_readings_equal(got, want, [0], names, rtol=1e-5)


class Tokens(torch.utils.data.Dataset[dict[str, Tensor]]):
    def __init__(self, n: int) -> None:
        self.ids = torch.randint(
            1, 40, (n, 8), generator=torch.Generator().manual_seed(2)
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def token_losses(outputs: Any, inputs: Any) -> Tensor:
    """Per-sequence sums of the shifted token losses over the tokens per sequence.

    The Trainer divides the token losses' sum by ``num_items_in_batch``, the
    count of labels before the shift (8 per sequence, of which 7 are predicted):
    these average to the model's loss.
    """
    logits, labels = outputs.logits[:, :-1], inputs["labels"][:, 1:]
    per = F.cross_entropy(logits.transpose(1, 2).float(), labels, reduction="none")
    return per.sum(1) / inputs["labels"].shape[1]


@pytest.mark.parametrize("given", [False, True])
def test_alpha_of_a_language_model_needs_its_per_sample_losses(
    tmp_path, given, torch_threads
):
    from glasscockpit.agent.integrations.transformers import GlasscockpitCallback

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    extra = {"losses": token_losses} if given else {}
    callback = GlasscockpitCallback(
        server=None, instruments=instruments(["alpha", "loss"]), budget=None, **extra
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=BATCH, max_steps=STEPS,
        learning_rate=1e-2, max_grad_norm=0.0,  # AdamW + clipping: alpha undefined
        report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    transformers.Trainer(
        model=transformers.GPT2LMHeadModel(config),
        args=args,
        train_dataset=Tokens(BATCH * STEPS),
        callbacks=[callback],
    ).train()
    readings, errors = readings_and_errors(callback.cockpit)
    assert readings[0]["loss"] is not None
    if given:
        assert readings[0]["alpha"] is not None
    else:
        assert readings[0].get("alpha") is None
        assert "per-sample losses" in errors[0]["alpha"]
