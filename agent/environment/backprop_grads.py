"""The gradient as backpropagated, whatever the step does to ``.grad`` afterwards.

Inside ``with cockpit.step(...)`` a training loop may change ``.grad`` after the
backward pass: gradient clipping (``clip_grad_norm_``, the Hugging Face Trainer's
``max_grad_norm``), ``GradScaler.unscale_``, noise, masks. The instruments
describe the gradient of the loss, so they read ``.grad`` as it was at the end of
the backward pass. A post-accumulate-grad hook on every parameter sees it there,
for the body of tracked steps only.

Copies cost a gradient's memory, so they are kept only while the loop is seen to
edit ``.grad``: a tracked step whose body left every ``.grad`` as backpropagated
(same tensor, same version counter) switches to keeping references. Should a
later step change ``.grad`` in place after all, that step reads the changed
gradient (with a note) and copies are kept from then on; a ``.grad`` replaced by
another tensor leaves the backpropagated one intact, which is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

#: The note on readings of a step whose ``.grad`` was edited before it was copied.
MISSED = (
    ".grad was changed inside cockpit.step after the backward pass (clipping?) "
    "on a step that kept no copy: read as changed; later steps keep a copy"
)


class BackpropGrads:
    """``.grad`` of each parameter at the end of the last backward pass of a body."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = list(params)
        #: Whether bodies copy ``.grad`` (until a body is seen not to edit it).
        self.copying = True
        #: ``id(p)`` -> (``.grad`` at the end of backward, its tensor, version).
        self._seen: dict[int, tuple[Tensor, Tensor, int]] = {}
        self._handles: list[RemovableHandle] = []
        self._edited: list[tuple[nn.Parameter, Tensor | None]] = []

    def start(self) -> None:
        """Forget the last body and hook every parameter."""
        self.stop()
        self._seen = {}
        for p in self.params:
            hook = partial(self._keep, id(p))
            self._handles.append(
                p.register_post_accumulate_grad_hook(hook)  # type: ignore[no-untyped-call]
            )

    def _keep(self, key: int, p: Tensor) -> None:
        g = p.grad
        if g is None:
            return
        # The copy is made now, before any edit; ``_version`` tells later whether
        # the tensor itself changed in place.
        kept = g.detach().clone() if self.copying else g
        self._seen[key] = (kept, g, g._version)

    def stop(self) -> None:
        """Detach the hooks; what they saw stays readable."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def restore(self) -> str | None:
        """Put the backpropagated gradients in ``.grad`` until ``put_back``.

        Returns:
            None, or ``MISSED`` when the body edited ``.grad`` on a step that kept
            no copy (the edited gradient stays).
        """
        self._edited = []
        edited = [
            (p, kept)
            for p in self.params
            if (kept := self._seen.get(id(p))) is not None
            and (p.grad is not kept[1] or p.grad._version != kept[2])
        ]
        seen, self._seen = self._seen, {}
        if not self.copying:
            if any(kept[1]._version != kept[2] for _, kept in edited):
                self.copying = True  # changed in place: the gradient is lost
                return MISSED
            # ``.grad`` replaced (``p.grad = p.grad * c``): the backpropagated
            # tensor itself is intact and is read instead.
        elif not edited and seen:
            self.copying = False  # this loop leaves .grad alone: no more copies
        for p, (backpropagated, _, _) in edited:
            self._edited.append((p, p.grad))
            p.grad = backpropagated
        return None

    @property
    def swapped(self) -> bool:
        """Whether ``.grad`` now holds backpropagated gradients in place of edits."""
        return bool(self._edited)

    def put_back(self) -> None:
        """Return the loop's edited gradients to ``.grad``."""
        for p, g in self._edited:
            p.grad = g
        self._edited = []
