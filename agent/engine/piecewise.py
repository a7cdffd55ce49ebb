"""Models whose Hessian diagonal is their GGN diagonal.

For a network built only from layers that are linear in each of their
parameters and in their input, with piecewise-linear activations between them
(ReLU, max-pooling), the output is, for a fixed activation pattern, linear in
every single parameter: the second derivative of the output with respect to a
parameter vanishes, and the Hessian diagonal of a cross-entropy or MSE loss
equals the GGN diagonal (what BackPACK's ``DiagHessian`` also returns for them).
The check is structural (a ``forward`` of our own cannot be inspected), so only
``nn.Sequential`` containers of the layers below qualify.
"""

from __future__ import annotations

from torch import nn

#: Linear in their parameters and their input, or piecewise linear, no parameters
#: shared. Eval-mode BatchNorm is an affine map (checked at the step: train mode
#: normalises with the batch, which is not).
_PIECES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Dropout,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
)


def not_piecewise_linear(model: nn.Module) -> str | None:
    """Why the GGN diagonal of ``model`` may differ from its Hessian's, or None."""
    seen: set[int] = set()
    # A final log-softmax belongs to the loss: the GGN passes start at the
    # logits before it (``nll_loss`` of it is ``cross_entropy`` of them).
    last = model[-1] if type(model) is nn.Sequential and len(model) else None
    for name, module in model.named_modules():
        if type(module) is nn.Sequential:
            continue
        if module is last and type(module) is nn.LogSoftmax:
            continue
        if type(module) not in _PIECES:
            return f"{name or 'the model'} is a {type(module).__name__}"
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                return f"a parameter of {name!r} is shared"
            seen.add(id(p))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            return f"BatchNorm {name!r} is in train mode"
    if type(model) is not nn.Sequential and type(model) not in _PIECES:
        return f"the model is a {type(model).__name__}"
    return None
