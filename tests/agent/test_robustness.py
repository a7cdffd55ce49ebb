"""Setups beyond the issue's model list: RNNs, autocast, sparse and dict outputs.

Recurrent layers cannot run under vmap; the engine loops over samples for them.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from glasscockpit.agent.engine import HookEngine
from glasscockpit.agent.instruments import BY_NAME
from tests.agent.harness import make_on_device, run_step, train_steps
from tests.agent.models import DropoutEncoder
from tests.agent.problems import BY_NAME as BY_PROBLEM
from tests.agent.problems import Problem
from tests.agent.reference import REFERENCES
from tests.agent.test_any_model import assert_counts_close, reference_data
from tests.agent.test_instruments import RTOL, assert_reading, variance_conditioning


class RecurrentClassifier(nn.Module):
    """Token embedding, a 2-layer LSTM or GRU, a head on the last step.

    ``hidden``: the head reads the last layer's final hidden state ``h_n`` (the
    RNN's second output, batch on axis 1) instead of the output sequence.
    ``seq_first``: the RNN runs sequence-first (``batch_first=False``).
    """

    def __init__(
        self,
        cell: type[nn.LSTM] | type[nn.GRU],
        hidden: bool = False,
        seq_first: bool = False,
    ) -> None:
        super().__init__()
        self.hidden, self.seq_first = hidden, seq_first
        self.emb = nn.Embedding(12, 6)
        self.rnn = cell(6, 7, num_layers=2, batch_first=not seq_first)
        self.head = nn.Linear(7, 3)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids)
        out, state = self.rnn(h.transpose(0, 1) if self.seq_first else h)
        if self.hidden:
            h_n = state[0] if isinstance(state, tuple) else state
            return self.head(h_n[-1])
        return self.head(out[-1] if self.seq_first else out[:, -1])


def _build(
    cell: type[nn.LSTM] | type[nn.GRU], hidden: bool = False, seq_first: bool = False
):
    def build() -> tuple[nn.Module, Tensor, Tensor]:
        return (
            RecurrentClassifier(cell, hidden, seq_first),
            torch.randint(0, 12, (5, 4)),
            torch.randint(0, 3, (5,)),
        )

    return build


RNNS = (
    Problem("lstm", _build(nn.LSTM), nn.functional.cross_entropy),
    Problem("gru", _build(nn.GRU), nn.functional.cross_entropy),
    # h_n read by the head: its gradient is hooked; sequence-first: recorded
    # batch-first, b transposed. All served by the rule.
    Problem("lstm_h_n", _build(nn.LSTM, hidden=True), nn.functional.cross_entropy),
    Problem(
        "gru_seq_first", _build(nn.GRU, seq_first=True), nn.functional.cross_entropy
    ),
    Problem(
        "lstm_seq_first_h_n",
        _build(nn.LSTM, hidden=True, seq_first=True),
        nn.functional.cross_entropy,
    ),
)


@pytest.mark.parametrize("problem", RNNS, ids=str)
@pytest.mark.parametrize(
    "name", ["norm_test", "inner_test", "mean_gsnr", "tic_diag", "grad_hist_1d"]
)
def test_recurrent_models_match_the_per_sample_loop(name, problem, torch_threads):
    assert_matches_the_loop(problem, name)


class _WithInitialState(nn.Module):
    """A GRU started from a learned initial state (``hx`` passed)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 6)
        self.rnn = nn.GRU(6, 7, num_layers=2, batch_first=True)
        self.h0 = nn.Linear(6, 14)
        self.head = nn.Linear(7, 3)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids)
        h0 = torch.tanh(self.h0(h[:, 0])).reshape(-1, 2, 7).transpose(0, 1)
        out, _ = self.rnn(h, h0.contiguous())
        return self.head(out[:, -1])


def _with_initial_state() -> tuple[nn.Module, Tensor, Tensor]:
    return (
        _WithInitialState(),
        torch.randint(0, 12, (5, 4)),
        torch.randint(0, 3, (5,)),
    )


@pytest.mark.parametrize("name", ["norm_test", "mean_gsnr", "grad_hist_1d"])
def test_recurrent_rule_serves_batch_first_rnns_with_an_initial_state(
    name, torch_threads
):
    # The exact rule re-runs the recurrence batched (no per-sample loop), from
    # the call's own initial state; the state's producer gets its gradient.
    problem = Problem("gru_h0", _with_initial_state, nn.functional.cross_entropy)
    assert_matches_the_loop(problem, name)
    for rnn in (*RNNS, problem):
        model, _, _ = make_on_device(rnn)
        engine = HookEngine(model, list(model.named_parameters()))
        assert engine.coverage["rnn.weight_hh_l1"] == "rnn-rule"


def test_rnn_read_through_h_n_is_served_by_its_rule(torch_threads):
    # h_n's gradient is hooked in the backward pass (and in each curvature
    # pass): no move to the whole-model re-run, TIC defined from the first step.
    model, _, _ = make_on_device(RNNS[2])
    engine = HookEngine(model, list(model.named_parameters()))
    assert engine.coverage["rnn.weight_ih_l0"] == "rnn-rule"
    got = run_step(RNNS[2], [BY_NAME["norm_test"](), BY_NAME["tic_diag"]()])
    assert got["tic_diag"] is not None  # its value: the per-sample loop test


def assert_matches_the_loop(problem: Problem, name: str) -> None:
    """``name``'s reading at step 0 against per-sample ``torch.autograd`` loops."""
    inst = BY_NAME[name]()
    got = run_step(problem, [inst])[name]
    data = reference_data(problem)
    want = REFERENCES[name](data, inst)
    if name == "grad_hist_1d":
        assert_counts_close(got.pop("counts"), want.pop("counts"), data, inst)
    rtol = RTOL
    if name == "mean_gsnr":  # float32 cancellation, as in test_instruments
        rtol = max(
            RTOL, 4 * torch.finfo(torch.float32).eps * variance_conditioning(data)
        )
    assert_reading(got, want, name, rtol)


def test_recurrent_forward_runs_without_cudnn_only_on_twice_differentiated_steps(
    torch_threads,
):
    # cuDNN's RNN kernels have no double backward (HVPs on a GPU fail with
    # "Double backwards is not supported for CuDNN RNNs"): the forward passes of
    # steps with curvature run without cuDNN, all others keep it.
    from glasscockpit.agent import Cockpit, every

    model, x, y = RNNS[0].make()
    seen: list[bool] = []
    model.rnn.register_forward_hook(
        lambda *_: seen.append(torch.backends.cudnn.enabled)
    )
    inst = BY_NAME["hess_max_ev"](schedule=every(2))
    cockpit = Cockpit(model, None, server=None, instruments=[inst], budget=None)
    for step in range(4):
        loss = nn.functional.cross_entropy(model(x), y)
        with cockpit.step(step, loss=loss):
            loss.backward()
    cockpit.close()
    assert seen == [False, True, False, True]
    assert torch.backends.cudnn.enabled
    assert all(r["hess_max_ev"] is not None for s, r in cockpit.readings.items())


def _head(body: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor, Tensor]:
    """``body`` + flatten + a linear head to 3 classes, built for input ``x``."""
    features = body(x).flatten(1).shape[1]
    model = nn.Sequential(body, nn.Flatten(), nn.Linear(features, 3))
    return model, x, torch.randint(0, 3, (x.shape[0],))


class _SeqFirstAttention(nn.Module):
    """Attention with separate q/k/v sizes and ``batch_first=False``."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, kdim=3, vdim=5)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, 12] -> sequence-first q, k, v
        q, k, v = (x[..., :4], x[..., 4:7], x[..., 7:])
        out = self.attn(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))[0]
        return self.head(out.mean(0))


class _DirectForward(nn.Module):
    """Calls a submodule's ``forward`` directly: its forward hooks never fire."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a.forward(x)))


def _spectral() -> tuple[nn.Module, Tensor, Tensor]:
    body = nn.utils.parametrizations.spectral_norm(nn.Linear(6, 5))
    model, x, y = _head(nn.Sequential(body, nn.ReLU()), torch.randn(5, 6))
    return model.eval(), x, y  # eval: no power iteration during the re-run


LAYERS = (
    Problem(
        "conv3d",
        lambda: _head(nn.Conv3d(2, 3, 2), torch.randn(4, 2, 4, 4, 4)),
        nn.functional.cross_entropy,
    ),
    Problem(
        "conv_transpose2d",
        lambda: _head(nn.ConvTranspose2d(2, 3, 3, stride=2), torch.randn(5, 2, 4, 4)),
        nn.functional.cross_entropy,
    ),
    Problem(
        "depthwise_dilated",
        lambda: _head(
            nn.Conv2d(
                4, 8, 3, groups=4, dilation=2, padding="same", padding_mode="reflect"
            ),
            torch.randn(5, 4, 6, 6),
        ),
        nn.functional.cross_entropy,
    ),
    Problem(
        "weight_norm",
        lambda: _head(
            nn.Sequential(
                nn.utils.parametrizations.weight_norm(nn.Linear(6, 5)), nn.Tanh()
            ),
            torch.randn(5, 6),
        ),
        nn.functional.cross_entropy,
    ),
    Problem("spectral_norm", _spectral, nn.functional.cross_entropy),
    Problem(
        "attention_seq_first",
        lambda: (
            _SeqFirstAttention(),
            torch.randn(5, 3, 12),
            torch.randint(0, 3, (5,)),
        ),
        nn.functional.cross_entropy,
    ),
    Problem(
        "direct_forward",
        lambda: (_DirectForward(), torch.randn(5, 6), torch.randint(0, 3, (5,))),
        nn.functional.cross_entropy,
    ),
)


@pytest.mark.parametrize("problem", LAYERS, ids=str)
@pytest.mark.parametrize(
    "name", ["norm_test", "inner_test", "mean_gsnr", "grad_hist_1d"]
)
def test_more_layer_kinds_match_the_per_sample_loop(name, problem, torch_threads):
    # Parametrized weights (weight_norm, spectral_norm), sequence-first attention
    # with kdim/vdim and a submodule run by ``.forward`` have no module rule: the
    # whole-model re-run serves them (reported in coverage), never a silent gap.
    assert_matches_the_loop(problem, name)


class _OldStyleSquare(torch.autograd.Function):
    """An autograd.Function without ``setup_context``: torch.func refuses it."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        return 2 * x * g


class _Opaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4) / 2)

    def forward(self, x: Tensor) -> Tensor:
        return _OldStyleSquare.apply(x) @ self.w  # type: ignore[no-any-return]


def test_a_module_no_engine_can_rerun_is_reported_and_training_goes_on(
    torch_threads,
):
    from glasscockpit.agent import Cockpit, always
    from glasscockpit.protocol import Readings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), _Opaque(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    names = ["norm_test", "tic_diag", "grad_hist_1d", "loss"]
    cockpit = Cockpit(
        model,
        opt,
        server=None,
        run="t",
        instruments=[BY_NAME[n](schedule=always) for n in names],
    )
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    for step in range(2):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        with cockpit.step(step, loss=loss):
            loss.backward()
        opt.step()
    cockpit.close()
    assert not cockpit.disabled  # undefined per step, not switched off
    frames = [f for f in cockpit.transport.frames if isinstance(f, Readings)]  # type: ignore[attr-defined]
    for frame in frames:
        assert frame.values["loss"] is not None
        for name in names[:3]:
            assert frame.values[name] is None
            assert "could not re-run _Opaque per sample" in frame.errors[name]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _cockpit(model: nn.Module, names: list[str]):
    """A Cockpit tracking ``names`` every step, in memory, raising on failure."""
    from glasscockpit.agent import Cockpit, always

    instruments = [BY_NAME[n](schedule=always) for n in names]
    return Cockpit(
        model, None, server=None, run="t", instruments=instruments, fail_mode="raise"
    )


def _readings(model: nn.Module, names: list[str], autocast: bool) -> dict:
    cockpit = _cockpit(model, names)
    torch.manual_seed(1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    loss = nn.functional.cross_entropy(out.float(), y)
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    return cockpit.readings[0]


def test_bf16_autocast_gives_the_float32_statistics_to_bf16_precision(torch_threads):
    # Under autocast each layer's output gradient is bf16 while its input is
    # float32: the engine computes in float32 and accepts bf16 round-off in its
    # sum check (it would otherwise report the parameters as not covered).
    names = ["norm_test", "inner_test", "tic_diag", "grad_norm"]
    want = _readings(_mlp(), names, autocast=False)
    got = _readings(_mlp(), names, autocast=True)
    for name in names:
        for key, value in want[name].items():
            # bf16 keeps 8 bits: a few 1e-2 relative through a ratio of variances.
            assert got[name][key] == pytest.approx(value, rel=0.1), (name, key)


class _DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"aux": x.sum(1), "logits": self.body(x)}


def test_dict_outputs_are_read_at_their_logits(torch_threads):
    torch.manual_seed(0)
    model = _DictModel()
    names = ["tic_diag", "norm_test"]
    cockpit = _cockpit(model, names)
    torch.manual_seed(1)  # the batch of _readings
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    loss = nn.functional.cross_entropy(model(x)["logits"], y)
    with cockpit.step(0, loss=loss):
        loss.backward()
    cockpit.close()
    plain = nn.Linear(6, 3)
    plain.load_state_dict(model.body.state_dict())
    want = _readings(nn.Sequential(plain), names, autocast=False)
    got = cockpit.readings[0]
    for name in names:
        assert got[name]["total"] == pytest.approx(want[name]["total"], rel=1e-5)


def test_sparse_embeddings_are_reported_not_covered(torch_threads):
    from glasscockpit.agent import Cockpit, always
    from glasscockpit.protocol import Readings

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(20, 5, sparse=True), nn.Flatten(), nn.Linear(15, 3)
    )
    names = ["grad_norm", "norm_test", "alpha"]
    cockpit = Cockpit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        server=None,
        run="t",
        instruments=[BY_NAME[n](schedule=always) for n in names],
    )
    ids, y = torch.randint(0, 20, (8, 3)), torch.randint(0, 3, (8,))
    for step in range(2):
        out = model(ids)
        losses = nn.functional.cross_entropy(out, y, reduction="none")
        with cockpit.step(step, loss=losses.mean(), losses=losses):
            losses.mean().backward()
        cockpit.optimizer.step()  # type: ignore[union-attr]
        cockpit.optimizer.zero_grad()  # type: ignore[union-attr]
    cockpit.close()
    assert not cockpit.disabled
    assert cockpit.hello.meta["coverage"]["0.weight"].startswith("not covered: sparse")
    got = cockpit.readings[0]
    assert got["grad_norm"]["0.weight"] > 0  # the sparse gradient, densified
    assert "0.weight" not in got["norm_test"] and "2.weight" in got["norm_test"]
    assert isinstance(got["alpha"], float)  # through the loss graph
    frame = [f for f in cockpit.transport.frames if isinstance(f, Readings)][0]  # type: ignore[attr-defined]
    assert frame.errors["norm_test"].startswith("partial: 1 of 3")


def _dropout_encoder() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)  # the same dropout masks in both runs
    model = DropoutEncoder().train()
    return model, torch.randint(0, 11, (5, 4)), torch.randint(0, 3, (5,))


@pytest.mark.parametrize("model_name", ["mlp", "dropout_encoder", "lstm_h_n"])
@pytest.mark.parametrize("unscale_inside", [False, True], ids=["scaled", "unscaled"])
def test_grad_scaler_readings_equal_the_unscaled_run(
    unscale_inside, model_name, torch_threads
):
    # scaler.scale(loss).backward() leaves s·∇L in .grad and in every recorded
    # output gradient; scaler.unscale_ (to clip, say) divides .grad only. The
    # readings are those of the unscaled run either way (s = 2^10: exact).
    from glasscockpit.agent import Cockpit, always

    names = ["grad_norm", "norm_test", "inner_test", "mean_gsnr", "cabs"]
    names += ["grad_hist_1d", "tic_diag", "alpha", "update_size"]

    def run(scaler: torch.amp.GradScaler | None) -> dict:
        if model_name == "mlp":
            model, x, y = BY_PROBLEM["mlp"].make()
        elif model_name == "lstm_h_n":  # h_n's captured gradient is scaled too
            model, x, y = RNNS[2].make()
        else:  # attention served from gradients captured under the loss scale
            model, x, y = _dropout_encoder()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        insts = [BY_NAME[n](schedule=always) for n in names]
        cockpit = Cockpit(
            model, opt, server=None, instruments=insts, budget=None, scaler=scaler
        )
        for step in range(3):
            opt.zero_grad()
            losses = nn.functional.cross_entropy(model(x), y, reduction="none")
            loss = losses.mean()
            with cockpit.step(step, loss=loss, losses=losses):
                if scaler is None:
                    loss.backward()
                else:
                    scaler.scale(loss).backward()
                    if unscale_inside:
                        scaler.unscale_(opt)
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)
                scaler.update()
        cockpit.close()
        assert cockpit.disabled == {}
        return cockpit.readings

    want = run(None)
    got = run(torch.amp.GradScaler("cpu", init_scale=1024.0))
    for step in range(2):
        for name in names:
            assert_reading(got[step][name], want[step][name], f"{step} {name}", 1e-6)


@pytest.mark.filterwarnings(
    # dynamo probes `.grad` of the non-leaf activations where it resumes after
    # a graph break (torch's own check, raised only because warnings are errors)
    "ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning"
)
def test_torch_compile_gives_the_eager_readings(torch_threads):
    # The engine's hooks run as plain Python under torch.compile (graph breaks
    # on tracked steps only: untracked steps have no hooks attached).
    from glasscockpit.agent import every

    names = ["grad_norm", "norm_test", "inner_test", "grad_hist_1d", "alpha"]

    def run(compiled: bool) -> dict:
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))
        model = torch.compile(module, backend="eager") if compiled else module
        opt = torch.optim.SGD(module.parameters(), lr=0.1)
        insts = [BY_NAME[n](schedule=every(2)) for n in names]
        x, y = torch.randn(32, 10), torch.randint(0, 4, (32,))
        return train_steps(model, opt, insts, lambda _: (x, y), 6).readings

    want, got = run(False), run(True)
    assert set(got) == set(want) == {0, 2, 4}
    for step in (0, 2):
        for name in names:
            assert_reading(got[step][name], want[step][name], f"{step} {name}", 1e-5)


@pytest.mark.parametrize("wrapper", ["DistributedDataParallel", "DataParallel"])
def test_data_parallel_wrappers_give_the_unwrapped_readings(wrapper, torch_threads):
    # The Cockpit tracks the wrapped module: the user's parameter names (no
    # "module." prefix) and the readings of the plain model (one process: the
    # gloo all-reduce of a world of one leaves the gradients as they are).
    import torch.distributed as dist

    from glasscockpit.agent import always
    from tests.conftest import free_port

    names = ["grad_norm", "norm_test", "inner_test", "grad_hist_1d", "alpha"]

    def run(wrap: bool) -> dict:
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))
        model: nn.Module = module
        if wrap and wrapper == "DataParallel":
            model = nn.DataParallel(module)  # no GPU: calls the module
        elif wrap:
            model = nn.parallel.DistributedDataParallel(module)
        opt = torch.optim.SGD(module.parameters(), lr=0.1)
        insts = [BY_NAME[n](schedule=always) for n in names]
        x, y = torch.randn(16, 10), torch.randint(0, 4, (16,))
        cockpit = train_steps(model, opt, insts, lambda _: (x, y), 3)
        assert [n for n, _ in cockpit.params] == [
            n for n, _ in module.named_parameters()
        ]
        return cockpit.readings

    if wrapper == "DistributedDataParallel":
        store = dist.TCPStore("127.0.0.1", free_port(), 1, is_master=True)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        want, got = run(False), run(True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    for step in (0, 1):
        for name in names:
            assert_reading(got[step][name], want[step][name], f"{step} {name}", 1e-6)


class _Packed(nn.Module):
    """An LSTM or GRU on a ``PackedSequence`` (token 0 pads), read through ``h_n``."""

    def __init__(self, cell: type[nn.LSTM] | type[nn.GRU]) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.rnn = cell(6, 8, num_layers=2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: Tensor) -> Tensor:
        lengths = (ids != 0).sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            self.emb(ids), lengths, batch_first=True, enforce_sorted=False
        )
        _, state = self.rnn(packed)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(h_n[-1])


def _packed(cell: type[nn.LSTM] | type[nn.GRU]):
    def build() -> tuple[nn.Module, Tensor, Tensor]:
        ids = torch.randint(1, 20, (5, 7))
        for n, length in enumerate([7, 3, 5, 2, 6]):
            ids[n, length:] = 0
        return _Packed(cell), ids, torch.randint(0, 3, (5,))

    return build


PACKED = (
    Problem("packed_lstm", _packed(nn.LSTM), nn.functional.cross_entropy),
    Problem("packed_gru", _packed(nn.GRU), nn.functional.cross_entropy),
)


@pytest.mark.parametrize("problem", PACKED, ids=str)
@pytest.mark.parametrize("name", ["norm_test", "mean_gsnr", "tic_diag", "grad_hist_1d"])
def test_packed_sequences_match_the_per_sample_loop(name, problem, torch_threads):
    # The rule records the padded input, pads the packed output's gradient and
    # keeps each sequence's state once its length is reached.
    assert_matches_the_loop(problem, name)
    model, _, _ = make_on_device(problem)
    engine = HookEngine(model, list(model.named_parameters()))
    assert engine.coverage["rnn.weight_hh_l1"] == "rnn-rule"
