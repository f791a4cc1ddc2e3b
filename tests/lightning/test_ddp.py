"""Two CPU processes: summed statistics, one bias, one verdict, rank-zero warnings, no hang."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning.pytorch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import ig_lightning_kit as kit  # noqa: E402
from torch import nn  # noqa: E402

from initguard.lightning import InitGuard  # noqa: E402

ROWS = 101  # odd: the distributed sampler pads one shard with a repeated row


def sharded_data():
    return kit.binary_data(ROWS, 0.4, 0)


def fit_two_ranks(strategy, folder, guard, head_scale=1.0, zero_head=False):
    x, y = sharded_data()
    torch.manual_seed(0)
    model = kit.Net(
        8, 1, nn.BCEWithLogitsLoss(), squeeze=True, head_scale=head_scale, zero_head=zero_head
    )
    trainer = kit.trainer(
        strategy=strategy,
        devices=2,
        max_steps=2,
        callbacks=[guard, kit.RankRecorder(str(folder))],
    )
    trainer.fit(model, kit.loader(x, y, batch_size=16, shuffle=False))
    return y


def load_ranks(folder):
    records = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    tensors = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return records, tensors


def logit(rate):
    return float(np.log(rate / (1 - rate)))


@pytest.mark.timeout(180)
def test_ddp_spawn_sums_statistics_and_writes_one_bias(tmp_path):
    # A zero-weight head outputs its bias, so each rank's first loss is the
    # real loss of that constant on the rank's own batch.
    y = fit_two_ranks("ddp_spawn", tmp_path, InitGuard(), zero_head=True)
    records, tensors = load_ranks(tmp_path)

    # The rows both shards train on: every row once, plus the one the
    # distributed sampler repeats to make the shards equal.
    indices = records[0]["indices"] + records[1]["indices"]
    assert len(indices) == ROWS + 1 and set(indices) == set(range(ROWS))
    trained_on = y.numpy()[indices]
    for tensor in tensors:
        assert tensor["start_bias"].item() == pytest.approx(logit(trained_on.mean()), rel=1e-6)
    # An odd number of positives in an even number of rows: no shard has the
    # overall rate, so a rank-local plan would differ from the one written.
    assert int(trained_on.sum()) % 2 == 1
    rank_rates = [y.numpy()[records[r]["indices"]].mean() for r in (0, 1)]
    assert all(abs(logit(r) - tensors[0]["start_bias"].item()) > 1e-3 for r in rank_rates)
    for key, value in tensors[0]["final"].items():
        assert torch.equal(value, tensors[1]["final"][key]), key

    reports = [r["report"] for r in records]
    assert reports[0] == reports[1]
    assert reports[0]["verdict"] == "pass" and reports[0]["batch_size"] == 32
    # DDP averages the ranks' losses; so does the check.
    local = [r["first_loss"] for r in records]
    assert local[0] != local[1]
    assert reports[0]["step0_loss"] == pytest.approx(sum(local) / 2, rel=1e-6)
    # The exact expectation is the mean over ranks of each batch's own one.
    bias = tensors[0]["start_bias"].double()
    loss = nn.BCEWithLogitsLoss()
    exact = []
    for record in records:
        first_y = y[record["indices"][:16]].double()
        exact.append(float(loss(bias.expand(len(first_y)), first_y)))
    assert local == pytest.approx(exact, rel=1e-6)
    assert reports[0]["expected_loss"] == pytest.approx(sum(exact) / 2, rel=1e-9)
    assert abs(reports[0]["deviation"]) < 1e-6 and reports[0]["standard_error"] == 0.0
    assert reports[0]["spread_excess"] == pytest.approx(0.0, abs=1e-12)
    assert any("summed over 2 processes" in n for n in reports[0]["notes"])
    assert any("DistributedSampler" in n for n in reports[0]["notes"])


@pytest.mark.timeout(120)
def test_ddp_fork_one_verdict_and_warnings_from_rank_zero_only(tmp_path):
    fit_two_ranks("ddp_fork", tmp_path, InitGuard(strict=False), head_scale=50.0)
    records, tensors = load_ranks(tmp_path)

    assert records[0]["report"] == records[1]["report"]
    assert records[0]["report"]["verdict"] == "fail"
    # The spread each rank measured, averaged in the step-0 reduction.
    assert "initial weights are too large" in records[0]["report"]["cause"]
    assert len(records[0]["warnings"]) == 1 and "FAIL" in records[0]["warnings"][0]
    assert records[1]["warnings"] == []
    assert records[0]["logs"] and records[1]["logs"] == []
    assert torch.equal(tensors[0]["start_bias"], tensors[1]["start_bias"])
    for key, value in tensors[0]["final"].items():
        assert torch.equal(value, tensors[1]["final"][key]), key


@pytest.mark.timeout(120)
def test_ddp_fork_strict_failure_stops_every_rank(tmp_path):
    # The launcher re-raises a worker's InitLossError as its own exception type.
    with pytest.raises(Exception, match=r"InitLossError: .*stopped before the second optimizer"):
        fit_two_ranks("ddp_fork", tmp_path, InitGuard(strict=True), head_scale=50.0)
    # Both ranks ran the first batch and neither started a second one: each
    # raised on its own (a rank that did not would start batch 1, then block).
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.batches").read_text().split() == ["0"]
