"""slimkit's integer codes (the autoround quantizer's) written into GGUF block formats as they are."""

import copy
import functools

import gguf
import numpy as np
import pytest
import torch
from slimkit_gguf import FILE_NAME, GGUFConfig, GGUFExporter
from slimkit_gguf.codes import pack
from slimkit_gguf.writer import FAMILIES

from slimkit.core.errors import ArtifactError, ConfigError
from slimkit.deploy.holdings import DEQUANTIZABLE, FLOAT, INT_CODES, RUNTIME_KERNELS, artifact_weights
from slimkit.evaluation import model_logits
from slimkit.testing import random_token_state

torch.set_num_threads(1)
Q = gguf.GGMLQuantizationType


@pytest.mark.parametrize("qtype,bits", [(Q.Q4_0, 4), (Q.Q4_0, 3), (Q.Q5_0, 5), (Q.Q8_0, 8), (Q.Q8_0, 4)])
@pytest.mark.parametrize("group_size", [32, 64])
def test_packed_blocks_dequantize_to_codes_times_scales(qtype, bits, group_size):
    torch.manual_seed(0)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = torch.randint(lo, hi + 1, (6, 128), dtype=torch.int8)
    codes[0, :4] = torch.tensor([lo, hi, 0, -1])
    scale = (torch.randn(6, 128 // group_size) * 0.01).to(torch.float16)  # negative scales too
    blocks = pack(codes, scale, group_size, qtype)
    assert blocks.shape == tuple(gguf.quant_shape_to_byte_shape((6, 128), qtype))
    expected = (codes.float().view(6, -1, group_size) * scale.float()[..., None]).view(6, 128)
    assert torch.equal(torch.from_numpy(gguf.quants.dequantize(blocks, qtype)), expected)


def test_pack_refuses_codes_wider_than_the_format():
    with pytest.raises(ValueError, match="do not fit Q4_0"):
        pack(torch.full((1, 32), 9, dtype=torch.int8), torch.ones(1, 1, dtype=torch.float16), 32, Q.Q4_0)


# --- the exporter on an autoround artifact ---------------------------------------------------------

@functools.cache
def _artifact(tmp_root, **values):
    pytest.importorskip("auto_round")
    pytest.importorskip("compressed_tensors")
    from slimkit_autoround import AutoRoundConfig, AutoRoundQuantizer

    from slimkit.pipeline.runner import save_artifact

    state = random_token_state()
    stage = AutoRoundQuantizer(AutoRoundConfig(method="rtn", **values))
    stage.apply(state)
    target = tmp_root / "-".join(f"{k}={v}" for k, v in sorted(values.items()))
    save_artifact(state, target, overwrite=False, records=[], model_info={"name": "tiny"})
    return state, target, stage.load(target, {})


def artifact(tmp_path_factory, **values):
    return _artifact(tmp_path_factory.getbasetemp(), **values)


@functools.cache
def _coded(bits, group_size, sym, embedding_bits):
    """The tiny model with round-to-nearest codes on every decoder Linear (and the embedding if
    ``embedding_bits``), attached the way the autoround quantizer leaves them in memory: fast, no AutoRound."""
    layout = pytest.importorskip("slimkit_autoround.layout")
    state = random_token_state()
    lo, hi = layout.code_range(bits)
    with torch.no_grad():
        for name, module in state.model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                w = module.weight.float()
                if sym:
                    spec = layout.round_to_nearest(w, bits, group_size)
                else:
                    groups = w.view(w.shape[0], -1, group_size)
                    wmin, wmax = groups.amin(-1).clamp(max=0), groups.amax(-1).clamp(min=0)
                    scale = ((wmax - wmin) / (hi - lo)).to(torch.float16).clamp(min=1e-4)
                    zero = torch.clamp(torch.round(lo - wmin / scale.float()), lo, hi)
                    codes = torch.clamp(torch.round(groups / scale.float()[..., None]) + zero[..., None], lo, hi)
                    spec = layout.IntWeights(bits, group_size, False, scale, codes.to(torch.int8).view(w.shape),
                                             zero.to(torch.int8))
                module.weight.copy_(spec.dequantize())
                setattr(module, layout.ATTRIBUTE, spec)
        if embedding_bits:
            table = state.model.model.embed_tokens
            spec = layout.round_to_nearest(table.weight, embedding_bits, group_size)
            table.weight.copy_(spec.dequantize())
            setattr(table, layout.ATTRIBUTE, spec)
    return state


def coded(bits=4, group_size=64, sym=True, embedding_bits=None):
    return copy.deepcopy(_coded(bits, group_size, sym, embedding_bits))


def _export(model, tokenizer, out, **config):
    out.mkdir(parents=True)
    return GGUFExporter(GGUFConfig(**config)).export(out, model, tokenizer, out)


def _file_weights(path):
    """Every tensor of a GGUF file dequantized by gguf-py, with its type."""
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type, torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type))))
            for t in reader.tensors}


def _gguf_name(hf_name, layers):
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers).get_name(hf_name, try_suffixes=(".weight",))


@pytest.mark.parametrize("weights", ["auto", "q4_0"])
def test_int4_codes_are_written_as_q4_0_without_requantization(tmp_path_factory, tmp_path, weights):
    """Symmetric int4 codes in groups of 64 (and the tied int4 embedding): the file holds exactly the
    autoround model's weights, and the report says nothing was re-quantized."""
    state, _, model = artifact(tmp_path_factory, group_size=64, embedding="int4")
    facts = _export(model, state.tokenizer, tmp_path / "gguf", weights=weights)
    assert facts["requantized"] is False and facts["requantized_tensors"] == 0
    assert facts["carried_tensors"] == 29 and facts["tensor_types"] == {"Q4_0": 29, "F32": 9}
    assert facts["format"] == "gguf Q4_0" and "not re-quantized" in facts["notes"]
    stored = _file_weights(tmp_path / "gguf" / FILE_NAME)
    family, config = FAMILIES["llama"], model.config
    for hf_name, param in model.named_parameters():
        if hf_name == "lm_head.weight":
            continue  # tied: the file's token_embd
        qtype, values = stored[_gguf_name(hf_name, config.num_hidden_layers)]
        expected = family.transform(hf_name, param.detach().float(), config)
        assert torch.equal(values.reshape(expected.shape), expected), hf_name
        assert (qtype == Q.Q4_0) == (param.ndim == 2), hf_name
    # gguf-py's own Q4_0 quantizer re-derives each block's scale from the weights and does not reproduce them
    w = model.model.layers[0].mlp.down_proj.weight.detach().float().numpy()
    requantized = gguf.quants.dequantize(gguf.quants.quantize(w, Q.Q4_0), Q.Q4_0)
    assert not np.array_equal(requantized, w)


def test_transformers_reads_the_carried_file_as_the_autoround_model(tmp_path_factory, tmp_path):
    from transformers import AutoModelForCausalLM

    state, _, model = artifact(tmp_path_factory, group_size=64, embedding="int4")
    _export(model, state.tokenizer, tmp_path / "gguf")
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "gguf"), gguf_file=FILE_NAME, dtype=torch.float32)
    probe = state.data.eval[:2, :48]
    assert (model_logits(back.eval(), probe) - model_logits(model, probe)).abs().max().item() < 1e-4


def test_int8_codes_are_carried_as_q8_0_and_said_so_under_q4_0(tmp_path):
    state = coded(bits=8, group_size=32, embedding_bits=8)
    model = state.model
    facts = _export(model, state.tokenizer, tmp_path / "auto")
    assert facts["requantized"] is False and facts["tensor_types"] == {"Q8_0": 29, "F32": 9}
    stored = _file_weights(tmp_path / "auto" / FILE_NAME)
    assert torch.equal(stored["blk.1.ffn_down.weight"][1], model.model.layers[1].mlp.down_proj.weight.detach())
    # Q4_0 cannot hold 8-bit codes: they are re-quantized, and the notes say which and why
    facts = _export(model, state.tokenizer, tmp_path / "q4", weights="q4_0")
    assert facts["requantized"] is True and facts["requantized_tensors"] == 28
    assert "8-bit codes (wider than Q4_0's 4 bits)" in facts["notes"]
    # the tied embedding at int8 codes: Q8_0 holds them (embeddings=auto), carried
    assert facts["carried_tensors"] == 1 and facts["tensor_types"] == {"Q4_0": 28, "Q8_0": 1, "F32": 9}


@pytest.mark.parametrize("values,reason", [({"sym": False, "group_size": 64}, "asymmetric 4-bit codes"),
                                           ({"group_size": 16}, "groups of 16")])
def test_codes_gguf_cannot_hold_are_exact_f32_under_auto_and_requantized_under_q4_0(tmp_path, values, reason):
    state = coded(**values)  # the embedding stays float
    model = state.model
    facts = _export(model, state.tokenizer, tmp_path / "auto")
    assert facts["requantized"] is False and facts["carried_tensors"] == 0 and reason in facts["notes"]
    assert "exact dequantized values as F32" in facts["notes"]
    assert facts["format"] == "gguf F32"
    stored = _file_weights(tmp_path / "auto" / FILE_NAME)
    assert torch.equal(stored["blk.0.ffn_up.weight"][1], model.model.layers[0].mlp.up_proj.weight.detach())
    facts = _export(model, state.tokenizer, tmp_path / "q4", weights="q4_0")
    assert facts["requantized"] is True and reason in facts["notes"] and "re-quantized by gguf-py" in facts["notes"]


def test_codes_that_no_longer_give_the_weight_are_refused(tmp_path_factory, tmp_path):
    state, _, model = artifact(tmp_path_factory, group_size=64, embedding="int4")
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1e-3)
    with pytest.raises(ArtifactError, match="model.layers.0.mlp.up_proj carries integer codes"):
        _export(model, state.tokenizer, tmp_path / "gguf")


# --- what the artifact holds, asked of its writer (no list of quantizer names) ---------------------

@pytest.mark.parametrize("writer,form", [(None, FLOAT), ("magnitude", FLOAT), ("quanto", DEQUANTIZABLE),
                                         ("autoround", INT_CODES), ("bnb", RUNTIME_KERNELS), ("int8", RUNTIME_KERNELS)])
def test_writers_declare_their_weight_form(writer, form):
    if writer and writer != "magnitude":
        pytest.importorskip(f"slimkit_{writer}")
    assert artifact_weights(writer) == form


@pytest.mark.parametrize("writer", ["autoround", "quanto", "magnitude"])
def test_artifacts_gguf_can_take_pass_the_config_check(writer):
    GGUFExporter().check_model(random_token_state().model.config, writer)


def test_a_runtime_kernel_artifact_is_refused_naming_autoround_as_an_alternative():
    pytest.importorskip("slimkit_bnb")
    with pytest.raises(ConfigError, match="quantizer=autoround"):
        GGUFExporter().check_model(random_token_state().model.config, "bnb")


def test_llama_cpp_runs_the_carried_file_like_the_autoround_model(tmp_path_factory, tmp_path):
    pytest.importorskip("llama_cpp")
    from slimkit_gguf.runtime import LlamaCppSession

    state, _, model = artifact(tmp_path_factory, group_size=64, embedding="int4")
    _export(model, state.tokenizer, tmp_path / "gguf")
    session = LlamaCppSession(tmp_path / "gguf" / FILE_NAME, threads=1)
    probe = state.data.eval[:2, :48]
    # the documented Q4_0 tolerance in llama.cpp (it also rounds activations to 8 bits in its dot products)
    assert (session.logits(probe) - model_logits(model, probe)).abs().max().item() < 5e-2
