"""`experiment=case_study_mobile` (QAT distillation -> AutoRound int4 -> GGUF and ONNX exports) through the CLI,
on the tiny model: the chain runs as configured and the int4 codes reach both runtimes without re-quantization."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("auto_round")
pytest.importorskip("onnxruntime_genai")


def run_tiny(tmp_path, *overrides: str) -> dict:
    """Run ``slimkit <overrides>`` on the tiny model and data (1 thread) into ``tmp_path``; its report.json."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    overrides = ("model=tiny", "data=tiny", "eval=fast", *overrides, f"hydra.run.dir={tmp_path}")
    run = subprocess.run([sys.executable, "-m", "slimkit", *overrides], capture_output=True, text=True, env=env,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((tmp_path / "report.json").read_text())


def test_case_study_mobile_chain_runs_on_the_tiny_model(tmp_path):
    report = run_tiny(tmp_path, "experiment=case_study_mobile", "distiller.max_steps=2", "distiller.eval_every=1",
                      "distiller.checkpoint_every=1")
    assert [(s["kind"], s["backend"]) for s in report["stages"]] == [("distiller", "kd"), ("quantizer", "autoround")]
    qat = report["stages"][0]["metrics"]
    assert qat["qat_bits"] == 4 and qat["qat_grid"] == "quantizer"  # trained on AutoRound's own grid, table included
    assert qat["qat_modules"] == 4 * 7 + 2  # every decoder Linear, the embedding table and the tied lm_head
    deployed = {d["exporter"]: d for d in report["deployments"]}
    assert set(deployed) == {"gguf", "onnx"}
    for entry in deployed.values():  # the artifact's int4 codes, written as they are
        assert entry["requantized"] is False and entry["carried_tensors"] > 0 and entry["requantized_tensors"] == 0
        assert entry["perplexity"] == pytest.approx(report["final"]["perplexity"], rel=1e-3)
    assert deployed["gguf"]["tensor_types"].get("Q4_0", 0) == deployed["gguf"]["carried_tensors"]


def composed(preset: str):
    """``experiment=<preset>`` composed and validated, nothing loaded: its (distiller, quantizer) configs and its
    exporter plans."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from slimkit.core.registry import default_registry
    from slimkit.deploy.plan import resolve_exporters
    from slimkit.pipeline import resolve_stages
    from slimkit.pipeline.config import register_configs

    register_configs()
    with initialize_config_module("slimkit.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=[f"experiment={preset}"]), resolve=True)
    registry = default_registry()
    stages = resolve_stages(cfg, registry)
    return stages[0][0].config, stages[1][0].config, resolve_exporters(cfg, registry)


def test_q4_0_variants_compose_with_llama_cpp_q4_0_tensor_types():
    for preset, group, table, exporters in (("case_study_mobile", 64, "int4", ["gguf", "onnx"]),
                                            ("case_study_mobile_q4_0", 32, "int8", ["gguf"]),
                                            ("case_study_mobile_openvino", 32, "int8", ["openvino", "gguf"])):
        kd, quantizer, plans = composed(preset)
        assert kd.qat_bits == 4 and kd.qat_grid == "auto"  # trains on the autoround stage's own grid
        assert (quantizer.group_size, quantizer.embedding, quantizer.sym) == (group, table, True)
        assert [p.name for p in plans] == exporters
        assert quantizer.sym_grid == "full_range"
        if preset == "case_study_mobile_openvino":  # 4x the steps; codes carried (weights=auto) at bf16
            assert kd.max_steps == 96 and plans[0].exporter.config.weights == "auto"
            assert plans[0].exporter.config.inference_precision == "bf16"


def test_case_study_mobile_executorch_composes_on_xnnpacks_grid():
    """`experiment=case_study_mobile_executorch`: the openvino recipe on the gptq grid (positive scales), the table
    per row, every code carried (weights=auto) into ExecuTorch, OpenVINO and GGUF."""
    pytest.importorskip("slimkit_executorch")
    kd, quantizer, plans = composed("case_study_mobile_executorch")
    assert kd.qat_bits == 4 and kd.qat_grid == "auto" and kd.max_steps == 96
    assert (quantizer.group_size, quantizer.sym, quantizer.sym_grid, quantizer.embedding,
            quantizer.embedding_group_size) == (32, True, "gptq", "int8", -1)
    assert [p.name for p in plans] == ["executorch", "openvino", "gguf"]
    assert all(p.exporter.config.weights == "auto" for p in plans)


def test_case_study_mobile_pruned_shrinks_distils_and_carries_codes_on_the_tiny_model(tmp_path):
    """`experiment=case_study_mobile_pruned`: 12.5% of the MLP channels removed (the model physically shrinks), float
    recovery distillation right after the cut, QAT distillation of the pruned student from the unpruned original on
    AutoRound's grid, int4 with the table int4 in
    the same groups, every code carried into OpenVINO. On the tiny model's MLP (128 channels) a quarter is cut, in
    multiples of 32 (AutoRound quantizes only Linear sizes that are multiples of 32), with groups of 32."""
    pytest.importorskip("openvino")
    pytest.importorskip("torch_pruning")
    report = run_tiny(tmp_path, "experiment=case_study_mobile_pruned", "pruner.sparsity=0.25", "pruner.round_to=32",
                      "quantizer.group_size=32", "pruner.recovery_steps=2",
                      "exporter=[openvino]", "distiller.max_steps=2", "distiller.eval_every=1",
                      "distiller.checkpoint_every=1", "eval.tasks=[]")
    assert [(s["kind"], s["backend"]) for s in report["stages"]] == [
        ("pruner", "torch_pruning"), ("distiller", "kd"), ("quantizer", "autoround")]
    pruned = report["stages"][0]
    assert pruned["metrics"]["mlp_channel_fraction"] == pytest.approx(0.25)
    # the float recovery right after the cut, by the kd plugin at the experiment's recovery rate
    recovery = pruned["metrics"]["recovery"]
    assert (recovery["method"], recovery["steps"], recovery["lr"]) == ("kd", 2, pytest.approx(1e-4))
    assert json.loads((tmp_path / "model" / "config.json").read_text())["intermediate_size"] == 96
    assert report["stages"][1]["metrics"]["qat_grid"] == "quantizer"
    config = report["stages"][2]["config"]
    assert (config["group_size"], config["embedding"], config["embedding_group_size"]) == (32, "int4", None)
    (entry,) = report["deployments"]
    assert entry["exporter"] == "openvino" and entry["requantized"] is False and entry["requantized_tensors"] == 0
    assert entry["carried_tensors"] == 4 * 7 + 1  # every decoder Linear of the pruned model and the tied table


def test_q4_0_calibrated_carries_calibrated_codes_into_gguf_on_the_tiny_model(tmp_path):
    """`experiment=q4_0_calibrated`: AutoRound's optimized RTN (calibrated, no training) on llama.cpp Q4_0's grid,
    the codes written into GGUF as they are."""
    pytest.importorskip("gguf")
    report = run_tiny(tmp_path, "experiment=q4_0_calibrated", "eval.tasks=[]")
    (stage,) = report["stages"]
    assert (stage["kind"], stage["backend"]) == ("quantizer", "autoround")
    assert (stage["config"]["method"], stage["config"]["optimized_rtn"], stage["config"]["group_size"],
            stage["config"]["sym"], stage["config"]["embedding"]) == ("rtn", True, 32, True, "int8")
    (entry,) = report["deployments"]
    assert entry["exporter"] == "gguf" and entry["requantized"] is False and entry["requantized_tensors"] == 0
    assert entry["carried_tensors"] == 4 * 7 + 1  # every decoder Linear at Q4_0, the tied table at Q8_0


def test_int4_calibrated_openvino_carries_codes_and_a_per_row_table_on_the_tiny_model(tmp_path):
    """`experiment=int4_calibrated_openvino`: optimized RTN in symmetric groups of 64, the tied table int8 with one
    scale per row, every code carried into OpenVINO (bf16 inference, u8 KV cache)."""
    pytest.importorskip("openvino")
    report = run_tiny(tmp_path, "experiment=int4_calibrated_openvino", "eval.tasks=[]")
    (stage,) = report["stages"]
    config = stage["config"]
    assert (config["method"], config["optimized_rtn"], config["group_size"], config["sym"], config["embedding"],
            config["embedding_group_size"]) == ("rtn", True, 64, True, "int8", -1)
    (entry,) = report["deployments"]
    assert entry["exporter"] == "openvino" and entry["requantized"] is False and entry["requantized_tensors"] == 0
    assert entry["carried_tensors"] == 4 * 7 + 1  # every decoder Linear and the tied table
    assert "1 weight int8 symmetric, one float16 scale per row" in entry["scheme"]
    assert (entry["inference_precision"], entry["kv_cache_precision"]) == ("bf16", "u8")
