"""``--report-to``: metrics records flattened for accelerate's trackers; unknown or missing trackers named."""

from __future__ import annotations

import pytest

from d2f.errors import UserError
from d2f.training.trackers import check_report_to, scalars


def test_records_become_flat_scalars():
    train = {"step": 10, "kind": "train", "loss": 0.5, "lr": 1e-3, "loss_t_bins": [0.9, None, 0.4]}
    assert scalars(train) == {"train/loss": 0.5, "train/lr": 1e-3, "train/loss_t_bin_0": 0.9, "train/loss_t_bin_2": 0.4}
    validation = {"step": 10, "kind": "validation", "grid": "samples/step_00010.png", "fd": 41.2}
    assert scalars(validation) == {"validation/fd": 41.2}


def test_unknown_and_missing_trackers_are_named():
    assert check_report_to(["tensorboard"]) == ["tensorboard"]
    with pytest.raises(UserError, match="unknown --report-to 'tensorbord'"):
        check_report_to(["tensorbord"])
    with pytest.raises(UserError, match="needs the .* package: pip install"):
        check_report_to(["aim"])  # not installed here
