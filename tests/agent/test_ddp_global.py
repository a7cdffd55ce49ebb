"""DDP with several gloo processes gives the readings of one process on the whole batch.

Each process trains a ``DistributedDataParallel`` replica on its slice of a global
batch; rank 0 also trains an unwrapped copy on the concatenated batch with its own
``Cockpit``. Every instrument (the ``full`` preset and the ones outside it) must
read the same at every step. One spawned group serves the MLP, the CNN and the
transformer.

Tolerance: the models run in float64, so that round-off cannot hide behind the
formulas' cancellations (GSNR and the early-stopping criterion divide by a
per-entry variance that is a difference of second moments; where samples agree,
float32 round-off of the moments is amplified by the GSNR itself, 10⁵ on the
CNN's last bias). The processes add their shares in another order than one
process adds the whole batch: readings agree to ``rtol=1e-8`` of the reading's
largest entry, histogram counts exactly. λ_max is computed with ``rtol=1e-7`` so
that Lanczos stops at convergence, not at an iteration count that round-off
could change.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F  # noqa: N812

from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.instruments import BY_NAME, GradNorm, Loss, NormTest
from tests.conftest import free_port

STEPS = 3
PER_RANK = 3  # samples per process
RTOL = 1e-8


def instruments() -> list[Any]:
    """Every instrument but Time, each on every step."""
    from glasscockpit.agent import always
    from glasscockpit.agent.instruments import ALL, HessMaxEV

    out: list[Any] = []
    for cls in ALL:
        if cls.name == "time":
            continue
        if cls is HessMaxEV:
            out.append(HessMaxEV(schedule=always, rtol=1e-7, max_iter=200))
        else:
            out.append(cls(schedule=always))
    return out


def problems() -> dict[str, Any]:
    from tests.agent.models import ENCODER
    from tests.agent.problems import PROBLEMS

    by_name = {p.name: p for p in PROBLEMS}
    return {"mlp": by_name["mlp"], "cnn": by_name["cnn"], "transformer": ENCODER}


def batch(problem: Any, n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The problem's model and a global batch of ``n`` samples like its own."""
    model, x, y = problem.make(0)
    model.double()
    if x.is_floating_point():
        x = x.double()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, x.shape[0], (n,), generator=g)
    x = x[idx].clone()
    if x.is_floating_point():
        x = x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return model, x, y[idx].clone()


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw: Any) -> Any:
    """STEPS tracked steps of SGD with momentum; the Cockpit's readings."""
    from glasscockpit.agent import Cockpit

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    cockpit = Cockpit(
        model,
        opt,
        server=None,
        instruments=instruments(),
        budget=None,
        fail_mode="raise",
        **kw,
    )
    for step in range(STEPS):
        opt.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        losses = F.cross_entropy(out, y, reduction="none")
        with cockpit.step(step, loss=loss, losses=losses):
            loss.backward()
        opt.step()
    cockpit.close()
    return cockpit


def compare(got: Any, want: Any, where: str, out: list[str]) -> None:
    """Readings equal to round-off (module docstring)."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            out.append(f"{where}: keys {sorted(got or {})} != {sorted(want)}")
            return
        if "counts" in want:
            a, b = got["counts"].double(), want["counts"].double()
            moved = float((a - b).abs().sum()) / 2
            if moved > 0:
                out.append(f"{where}.counts: {moved} of {float(b.sum())} moved")
            rest = {k: v for k, v in want.items() if k != "counts"}
            for k, v in rest.items():
                compare(got[k], v, f"{where}.{k}", out)
            return
        for k, v in want.items():
            compare(got[k], v, f"{where}.{k}", out)
        return
    if want is None or got is None:
        if got is not want:
            out.append(f"{where}: {got!r} != {want!r}")
        return
    a = torch.as_tensor(got, dtype=torch.float64)
    b = torch.as_tensor(want, dtype=torch.float64)
    scale = float(b.abs().max()) if b.numel() else 0.0
    if a.shape != b.shape or not torch.allclose(
        a, b, rtol=RTOL, atol=RTOL * scale + 1e-12, equal_nan=True
    ):
        err = float((a - b).abs().max()) if a.shape == b.shape else math.inf
        out.append(
            f"{where}: {a.flatten()[:4].tolist()} != {b.flatten()[:4].tolist()} "
            f"(max abs diff {err:.3g}, scale {scale:.3g})"
        )


def stream(server: str, rank: int, world: int) -> list[float]:
    """A short float32 DDP run streamed to ``server``; this process's losses.

    The default schedules (the overhead budget is off under DDP) and λ_max too:
    float32 models, the cadences by cost and Hessian products over gloo.
    """
    from glasscockpit.agent import Cockpit, always
    from glasscockpit.agent.instruments import HessMaxEV

    model, x, y = batch(problems()["mlp"], PER_RANK * world)
    model, x = model.float(), x.float()
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    insts = [Loss(schedule=always), GradNorm(), NormTest(), HessMaxEV()]
    cockpit = Cockpit(ddp, opt, run="ddp-job", server=server, instruments=insts)
    losses = []
    for step in range(STEPS):
        opt.zero_grad()
        loss = F.cross_entropy(ddp(x[mine]), y[mine])
        with cockpit.step(step, loss=loss):
            loss.backward()
        opt.step()
        losses.append(float(loss))
    cockpit.close()
    return losses


def through_accelerate(rank: int, world: int) -> list[str]:
    """Accelerate's DDP with two micro-batches per step, against one process.

    Gradients are clipped inside the step: the instruments read them as
    backpropagated (and all-reduced), on every process as on one.

    ``attach`` and ``micro_batch`` of ``agent/integrations/accelerate.py`` on each
    process's share; rank 0 compares with one process stepping on the whole
    batch (the same samples and gradient, another grouping). Curvature is left
    out: ``micro_batch`` opens the step after the forward pass.
    """
    accelerate = pytest.importorskip("accelerate")
    from glasscockpit.agent.integrations.accelerate import attach, micro_batch

    names = ["loss", "grad_norm", "norm_test", "inner_test", "ortho_test"]
    names += ["grad_hist_1d", "mean_gsnr", "alpha", "distance", "update_size"]
    insts = [BY_NAME[n](schedule=always) for n in names]
    model, x, y = batch(problems()["mlp"], 2 * PER_RANK * world)
    # Micro-batch m of this process: block m·world + rank of PER_RANK samples.
    parts = [
        slice((m * world + rank) * PER_RANK, (m * world + rank + 1) * PER_RANK)
        for m in range(2)
    ]
    out = []
    acc = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    ddp, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.05))
    cockpit = attach(acc, ddp, opt, server=None, instruments=insts, budget=None)
    for _ in range(STEPS):
        for part in parts:
            with acc.accumulate(ddp):
                losses = F.cross_entropy(ddp(x[part]), y[part], reduction="none")
                with micro_batch(cockpit, acc, losses.mean(), losses):
                    acc.backward(losses.mean())
                    if acc.sync_gradients:  # inside the step: not seen
                        acc.clip_grad_norm_(ddp.parameters(), 0.01)
                opt.step()
                opt.zero_grad()
    cockpit.close()
    if rank == 0:
        ref_model = problems()["mlp"].make(0)[0].double()
        ref = Cockpit(
            ref_model, torch.optim.SGD(ref_model.parameters(), lr=0.05),
            server=None, instruments=[BY_NAME[n](schedule=always) for n in names],
            budget=None, data_parallel=False,
        )  # fmt: skip
        for step in range(STEPS):
            ref.optimizer.zero_grad()  # type: ignore[union-attr]
            losses = F.cross_entropy(ref_model(x), y, reduction="none")
            with ref.step(step, loss=losses.mean(), losses=losses):
                losses.mean().backward()
                nn.utils.clip_grad_norm_(ref_model.parameters(), 0.01)
            ref.optimizer.step()  # type: ignore[union-attr]
        ref.close()
        got, want = cockpit.readings, ref.readings
        for step in want:
            for key in want[step]:
                where = f"accelerate[{step}].{key}"
                a, b = got.get(step, {}).get(key), want[step][key]
                if key == "loss":  # the driver means micro-batch losses in float32
                    if not math.isclose(a, b, rel_tol=1e-6):
                        out.append(f"{where}: {a} != {b}")
                    continue
                compare(a, b, where, out)
    return out


def refused_fsdp(world: int) -> str:
    """What the Cockpit says to an FSDP2 model (``fully_shard``)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from glasscockpit.agent import Cockpit

    model = batch(problems()["mlp"], world)[0]
    fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    try:
        Cockpit(model, server=None, instruments="economy")
    except NotImplementedError as exc:
        return str(exc)
    return "accepted"


def _worker(
    rank: int, world: int, port: int, out: str, server: str | None, backend: str
) -> None:
    torch.set_num_threads(1)
    device = torch.device("cpu")
    if backend == "nccl" or server == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        server = None
    # What a launcher sets (Accelerate reads it, and uses the group below).
    os.environ.update(
        WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    store = dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    report: dict[str, Any] = {"failures": []}
    try:
        for name, problem in problems().items():
            model, x, y = batch(problem, PER_RANK * world)
            model, x, y = model.to(device), x.to(device), y.to(device)
            mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            reference = None
            if rank == 0:
                ref_model = problem.make(0)[0].double().to(device)
                reference = train(ref_model, x, y, data_parallel=False)
            ids = None if device.type == "cpu" else [device.index]
            ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
            cockpit = train(ddp, x[mine], y[mine])
            if rank == 0:
                assert reference is not None
                got, want = cockpit.readings, reference.readings
                if sorted(got) != sorted(want):
                    report["failures"].append(f"{name}: steps {sorted(got)}")
                for step in want:
                    for key in want[step]:
                        compare(
                            got.get(step, {}).get(key),
                            want[step][key],
                            f"{name}[{step}].{key}",
                            report["failures"],
                        )
                report[f"{name}_keys"] = sorted(want[0])
                report[f"{name}_meta"] = cockpit.hello.meta.get("data_parallel")
            else:
                report[f"{name}_sent"] = cockpit.stats.sent
                report[f"{name}_dropped"] = cockpit.stats.dropped
            report[f"{name}_traffic"] = vars(cockpit._dp.group.traffic)
        if server is not None:
            report["streamed"] = stream(server, rank, world)
            report["fsdp"] = refused_fsdp(world)
            report["failures"] += through_accelerate(rank, world)
        Path(out, f"{rank}.json").write_text(json.dumps(report, default=str))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip the store threads' teardown (see test_ddp.py)


def run_group(
    world: int, tmp_path: Path, server: str | None = None, backend: str = "gloo"
) -> list[dict[str, Any]]:
    """``world`` processes; ``server="cuda"`` with gloo: CUDA tensors over gloo."""
    args = (world, free_port(), str(tmp_path), server, backend)
    mp.spawn(_worker, args=args, nprocs=world)
    return [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(world)]


def check(reports: list[dict[str, Any]], world: int) -> None:
    zero = reports[0]
    assert zero["failures"] == []
    for name in problems():
        # Every instrument of the full preset and beyond actually read.
        assert len(zero[f"{name}_keys"]) >= 17, zero[f"{name}_keys"]
        assert zero[f"{name}_meta"]["processes"] == world
        traffic = zero[f"{name}_traffic"]
        # One packed all-reduce per tracked step (plus curvature products).
        assert traffic["packed"] == STEPS, traffic
        for rank in range(1, world):
            assert reports[rank][f"{name}_sent"] == 0
            assert reports[rank][f"{name}_dropped"] > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_two_processes_read_the_global_batch(tmp_path: Path) -> None:
    """Also: a run streamed by both processes is one run of rank 0's frames."""
    from tests.server.harness import live_server

    with live_server(free_port()) as srv:
        reports = run_group(2, tmp_path, srv.ws)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _finished(srv):
            time.sleep(0.05)
        runs = list(srv.store.runs)
        with urllib.request.urlopen(f"{srv.http}/v1/runs", timeout=5) as r:
            listed = [row["run"] for row in json.load(r)]
        stored = srv.store.get("ddp-job")
        assert stored is not None
        steps = stored.series[("loss", "total")].view(None, None)
        meta = stored.meta
    check(reports, 2)
    assert runs == ["ddp-job"] and listed == ["ddp-job"]
    # The dashboard's loss is the global batch's: the mean of the processes'.
    local = [r["streamed"] for r in reports]
    want = [sum(v) / len(v) for v in zip(*local, strict=True)]
    assert [int(s) for s in steps.step] == list(range(STEPS))
    assert list(steps.value) == pytest.approx(want, rel=1e-6)
    assert meta["data_parallel"]["processes"] == 2
    # FSDP's sharded parameters are refused, not read shard by shard.
    for r in reports:
        assert "sharded over processes" in r["fsdp"], r["fsdp"]


def _finished(srv: Any) -> bool:
    run = srv.store.get("ddp-job")
    return run is not None and srv.store.status(run, 60.0) == "finished"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_four_processes_read_the_global_batch(tmp_path: Path) -> None:
    check(run_group(4, tmp_path), 4)


@pytest.mark.cuda
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nccl_processes_read_the_global_batch(tmp_path: Path) -> None:
    """NCCL with one GPU per process (2 GPUs); on one GPU, CUDA tensors over gloo.

    NCCL refuses two processes on one device, so a one-GPU machine checks the
    device path (buffers, all-reduces and readings of CUDA tensors) with gloo.
    """
    if torch.cuda.device_count() >= 2:
        check(run_group(2, tmp_path, backend="nccl"), 2)
    else:
        check(run_group(2, tmp_path, server="cuda"), 2)
