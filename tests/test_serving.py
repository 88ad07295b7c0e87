"""The serving-condition timing: each model in its own fresh process, the order alternating between rounds."""

import pytest

import slimkit
from slimkit.evaluation.serving import TimingError, serving_latency
from slimkit.models import tiny_model


def test_each_round_times_each_model_alone_in_alternating_order(tiny_cfg, tmp_path):
    report = slimkit.run(tiny_cfg("pruner=random", "pruner.sparsity=0.5", "~quantizer", "eval.latency=false"),
                         tmp_path / "run")
    tiny_model(0).save_pretrained(tmp_path / "original", safe_serialization=True)  # the tiny experiment's original
    served = serving_latency(tmp_path / "original", report["artifact"], list(range(1, 17)), processes=2,
                             repeats=1, decode_tokens=2)
    assert len(served["runs"]) == 2
    first, second = served["runs"]
    assert first["order"] == ["baseline", "final"] and second["order"] == ["final", "baseline"]
    pids = [run["pids"][role] for run in served["runs"] for role in ("baseline", "final")]
    assert len(set(pids)) == 4                                    # four processes, one model each
    assert 0.0 <= served["top1_agreement"] <= 1.0 and served["top1_agreement"] == min(
        run["top1_agreement"] for run in served["runs"])
    for run in served["runs"]:
        t = run["timing"]
        assert run["prefill_speedup"] == pytest.approx(t["baseline"]["prefill_ms"] / t["final"]["prefill_ms"])
    assert served["prefill_speedup"]["min"] <= served["prefill_speedup"]["median"] <= served["prefill_speedup"]["max"]
    with pytest.raises(TimingError, match=r"timing process \(baseline\) failed"):  # a worker that fails is an error
        serving_latency(tmp_path / "missing", report["artifact"], [1, 2, 3], processes=1, repeats=1, decode_tokens=1)
