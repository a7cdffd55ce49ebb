"""The agent and the adapters' modules import without the frameworks."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("transformers", "lightning", "pytorch_lightning", "accelerate")


def test_adapters_import_their_framework_only_when_used() -> None:
    # A framework that cannot be imported at all (as where it is not installed).
    code = f"""
import sys
for name in {FRAMEWORKS!r}:
    sys.modules[name] = None
import glasscockpit.agent
from glasscockpit.agent.integrations import accelerate, driver, lightning, transformers
try:
    transformers.GlasscockpitCallback
except ImportError as exc:
    assert "glasscockpit[integrations]" in str(exc), exc
else:
    raise AssertionError("no ImportError")
try:
    lightning.GlasscockpitCallback
except ImportError as exc:
    assert "glasscockpit[integrations]" in str(exc), exc
else:
    raise AssertionError("no ImportError")
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_metric_names_map_to_cockpit_log_keywords() -> None:
    from glasscockpit.agent.integrations.driver import log_keyword

    assert log_keyword("eval_loss") == "valid_loss"
    assert log_keyword("eval_accuracy") == "valid_accuracy"
    assert log_keyword("val/acc") == "valid_accuracy"
    assert log_keyword("val_loss_epoch") == "valid_loss"
    assert log_keyword("train_loss") == "train_loss"
    assert log_keyword("loss") == "train_loss"
    assert log_keyword("test_acc") == "test_accuracy"
    assert log_keyword("eval_f1") is None
    assert log_keyword("grad_norm") is None
    assert log_keyword("learning_rate") is None
