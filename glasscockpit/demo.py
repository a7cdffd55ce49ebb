"""The demo: a server with the dashboard and a real training run streaming into it.

Trains an MLP on scikit-learn's handwritten digits (shipped inside the package,
no download) with SGD + momentum and a cosine learning-rate schedule.
"""

from __future__ import annotations

import time
import urllib.request

import torch
import torch.nn.functional as F  # noqa: N812
from sklearn.datasets import load_digits
from torch import nn
from tqdm import tqdm

from glasscockpit.agent import Cockpit


def digits(
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train/test split of the 8x8 digits, features scaled to [0, 1]."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return x[:1500], y[:1500], x[1500:], y[1500:]


def server_up(port: int) -> bool:
    """Whether a glasscockpit server already answers on 127.0.0.1:port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def train(
    cockpit: Cockpit, model: nn.Module, epochs: int, delay: float, batch: int = 64
) -> float:
    """Train with the cockpit attached; returns the final test accuracy."""
    x, y, xt, yt = digits()
    opt = cockpit.optimizer
    assert opt is not None
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=epochs * (len(x) // batch)
    )
    step = 0
    acc = 0.0
    bar = tqdm(range(epochs), desc="training", unit="epoch")
    for _epoch in bar:
        perm = torch.randperm(len(x))
        for i in range(0, len(x) - batch + 1, batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            out = model(x[idx])
            # Per-sample losses (for Alpha) and their mean, the loss: curvature
            # instruments read its graph back to the model's output.
            losses = F.cross_entropy(out, y[idx], reduction="none")
            loss = losses.mean()
            with cockpit.step(step, loss=loss, batch_size=batch, losses=losses):
                loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            step += 1
            if delay:
                time.sleep(delay)
        with torch.no_grad():
            acc = (model(xt).argmax(1) == yt).float().mean().item()
            train_acc = (model(x).argmax(1) == y).float().mean().item()
            cockpit.log(
                step,
                train_loss=F.cross_entropy(model(x), y).item(),
                test_loss=F.cross_entropy(model(xt), yt).item(),
                train_accuracy=train_acc,
                test_accuracy=acc,
            )
        bar.set_postfix(
            loss=f"{loss.item():.3f}", test_acc=f"{acc:.3f}", link=cockpit.stats.state
        )
    return acc


def run_demo(
    port: int = 8050,
    epochs: int = 40,
    delay: float = 0.03,
    keep_serving: bool = True,
    preset: str = "full",
) -> int:
    """Start (or reuse) a server on ``port``, train, and keep serving until Ctrl-C."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    server = None
    if not server_up(port):
        from glasscockpit.server.serve import serve_in_thread
        from glasscockpit.server.settings import Settings

        server, _ = serve_in_thread(Settings(port=port))
    print(
        f"glasscockpit: dashboard at http://127.0.0.1:{port}/  (open it in a browser)"
    )
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    run = f"digits-sgd-{time.strftime('%H%M%S')}"
    cockpit = Cockpit(
        model,
        opt,
        run=run,
        server=f"ws://127.0.0.1:{port}",
        instruments=preset,
        meta={"dataset": "sklearn digits", "batch_size": 64, "epochs": epochs},
    )
    acc = train(cockpit, model, epochs, delay)
    cockpit.close()
    print(
        f"glasscockpit: run {run} finished, test accuracy {acc:.3f}; "
        f"stats {cockpit.stats}"
    )
    if server is not None and keep_serving:
        print("glasscockpit: still serving the dashboard; press Ctrl-C to stop")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    if server is not None:
        server.should_exit = True
    return 0
