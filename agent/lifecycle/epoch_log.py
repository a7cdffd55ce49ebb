"""Epoch-level metrics sent by ``Cockpit.log``: their instruments and keywords."""

from __future__ import annotations

from glasscockpit.protocol import InstrumentSpec, Kind, PanelSpec, Value

#: Instruments fed by ``Cockpit.log``: epoch-level metrics, one series per split.
LOG_SPECS = (
    InstrumentSpec(
        "epoch_loss",
        Kind.PER_LAYER,
        PanelSpec(
            title="Epoch loss",
            y_label="loss",
            log_y=True,
            group="performance",
            help="Train/validation/test loss logged with cockpit.log(...).",
        ),
        "logged",
    ),
    InstrumentSpec(
        "epoch_accuracy",
        Kind.PER_LAYER,
        PanelSpec(
            title="Epoch accuracy",
            y_label="accuracy",
            group="performance",
            help="Train/validation/test accuracy logged with cockpit.log(...).",
        ),
        "logged",
    ),
)
#: ``Cockpit.log`` keyword -> (instrument key, series key).
LOG_KEYS = {
    f"{split}_{metric}": (f"epoch_{metric}", split)
    for split in ("train", "valid", "test")
    for metric in ("loss", "accuracy")
}


def epoch_values(metrics: dict[str, float]) -> dict[str, Value]:
    """``Cockpit.log`` keywords as readings: {instrument key: {split: value}}.

    Raises:
        ValueError: a keyword is not one of ``LOG_KEYS``.
    """
    unknown = sorted(set(metrics) - set(LOG_KEYS))
    if unknown:
        raise ValueError(
            f"Unknown metric(s) {unknown}; expected some of {sorted(LOG_KEYS)}"
        )
    values: dict[str, Value] = {}
    for key, value in metrics.items():
        inst, split = LOG_KEYS[key]
        series = values.setdefault(inst, {})
        assert isinstance(series, dict)
        series[split] = float(value)
    return values
