"""Intel AutoRound as a slimkit quantizer: calibrated weight-only integer quantization (SignRound, AWQ or
round-to-nearest) on the calibration windows of ``data``, saved in the compressed-tensors format that plain
``AutoModelForCausalLM.from_pretrained`` reloads (with the ``compressed-tensors`` package installed).

Sample config (``conf`` group ``quantizer``)::

    quantizer: autoround
    quantizer.bits: 4                  # 2, 3, 4 or 8 (per module through overrides / budget_bits)
    quantizer.group_size: 64           # input features per scale; must divide every selected layer's input width
    quantizer.sym: true                # symmetric codes (no zero points): what GGUF Q4_0 / MatMulNBits hold as is
    quantizer.sym_grid: full_range     # symmetric grid: full_range (llama.cpp Q4_0's) | gptq (positive scales, for ExecuTorch)
    quantizer.method: signround        # signround (AutoRound's tuned rounding) | awq (AWQ scaling + RTN) | rtn
    quantizer.iters: 50                # SignRound steps per decoder block (AutoRound's default 200 is ~4x slower)
    quantizer.embedding: float         # the input embedding table (tied lm_head shares it): float | int8 | int4
    quantizer.embedding_group_size: null  # the table's columns per scale: null = group_size, -1 = one per row
    quantizer.exclude: [lm_head]
    quantizer.overrides: {"model.layers.0.*": 8}
    # or quantizer.budget_bits=4.5: per-module widths from a round-to-nearest sensitivity scan on the same grid

Calibration uses ``data.calibration_samples`` windows of ``data.seq_len`` tokens (AutoRound's ``nsamples`` and
``seqlen``); nothing is downloaded. Weights are fake-quantized in float32 during and after the stage (AutoRound
runs with ``amp=False``: this CPU's bf16 is emulated and slower), with float16 scales. ``method=rtn`` is plain
round-to-nearest on the same grid unless ``optimized_rtn=true`` (AutoRound's activation-weighted scale search).

Two symmetric grids (``quantizer.sym_grid``), both codes ``[-2**(bits-1), 2**(bits-1) - 1]`` with one float16
scale per group: ``full_range`` (AutoRound's ``int_sym``, llama.cpp ``Q4_0``'s convention) puts each group's
largest-magnitude weight at code ``-2**(bits-1)``, so the scale is negative where that weight is positive;
``gptq`` (AutoRound's ``int_sym_gptq``, GPTQ's symmetric grid) uses ``scale = 2 * absmax / (2**bits - 1) > 0``.
GGUF, ONNX and OpenVINO hold either as it is; ExecuTorch's XNNPACK kernels take positive scales only, so a recipe
bound for ``exporter=executorch`` carries its int4 decoder there only with ``sym_grid=gptq``.

A tied ``lm_head`` is the embedding table: AutoRound cannot tune it, so ``embedding=int8|int4`` quantizes that
table by round-to-nearest (symmetric, one float16 scale per ``embedding_group_size`` columns — by default
``group_size``; ``-1`` is one scale per row, i.e. per token, as NNCF stores its int8 table) and the output
projection uses the same codes. The integer codes, scales and group size of every quantized module stay readable from the
artifact: see :mod:`slimkit_autoround.layout` (``read_int_weights``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional

import torch

from slimkit import ConfigError, DataError, Kind, Stage
from slimkit.core.plugin import choice, ranged
from slimkit.toolkit.quantization import MixedPrecisionConfig, plan_precision, resolve_plan, swap_module

from .layout import (ATTRIBUTE, IntWeights, code_range, codes_of, load_dequantized, read_int_weights, round_to_nearest, save_compressed,
                     storage_bits)

WEIGHT_BITS = (2, 3, 4, 8)
METHODS = ("signround", "awq", "rtn")
#: quantizer.sym_grid -> AutoRound's quantize-dequantize function (its registered data type) for symmetric weights
SYM_GRIDS = {"full_range": "int_sym", "gptq": "int_sym_gptq"}
EMBEDDING_MODES = ("float", "int8", "int4")


@dataclasses.dataclass
class AutoRoundConfig(MixedPrecisionConfig):
    """AutoRound settings (``bits``/``include``/``exclude``/``overrides``/``budget_bits`` shared with every quantizer)."""

    #: default weight bits of the selected Linear modules
    bits: int = 4
    #: input features sharing one scale; must divide the input width of every quantized layer
    group_size: int = ranged(64, 1)
    #: symmetric codes (no zero point); false stores a zero point per group
    sym: bool = True
    #: symmetric grid: 'full_range' (a group's largest weight at code -2**(bits-1), scale of either sign: llama.cpp
    #: Q4_0's convention) or 'gptq' (scale = 2 * absmax / (2**bits - 1) > 0: what ExecuTorch's XNNPACK holds)
    sym_grid: str = choice("full_range", tuple(SYM_GRIDS))
    #: 'signround' (AutoRound's signed-gradient rounding/clipping tuning), 'awq' (AWQ activation-aware scaling,
    #: then round-to-nearest) or 'rtn' (round-to-nearest)
    method: str = choice("signround", METHODS)
    #: SignRound optimisation steps per decoder block
    iters: int = ranged(50, 0)
    #: SignRound learning rate (null: AutoRound's default, 1/iters)
    lr: Optional[float] = ranged(None, 0.0, low_open=True)
    #: also tune the clipping range (min/max scales) in SignRound
    minmax_tuning: bool = True
    #: calibration windows per SignRound step (capped at data.calibration_samples)
    batch_size: int = ranged(8, 1)
    #: decoder blocks tuned together in SignRound
    nblocks: int = ranged(1, 1)
    #: method=rtn only: AutoRound's activation-weighted scale search instead of plain round-to-nearest
    optimized_rtn: bool = False
    #: the input embedding table (shared with a tied lm_head): 'float', 'int8' or 'int4' (round-to-nearest)
    embedding: str = choice("float", EMBEDDING_MODES)
    #: columns of the embedding table per float16 scale: null (the default) = ``group_size``, -1 = one scale per
    #: row (per token); otherwise must divide the table's width
    embedding_group_size: Optional[int] = None
    #: let AutoRound torch.compile its tuning step (off: compiling costs minutes per block on a busy CPU)
    compile: bool = False

    ALLOWED_BITS: ClassVar[tuple[int, ...]] = WEIGHT_BITS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method == "signround" and self.iters == 0:
            raise ConfigError("quantizer.iters", self.iters, "at least 1 with quantizer.method=signround "
                              "(for round-to-nearest set quantizer.method=rtn)")
        if self.sym_grid != "full_range" and not self.sym:
            raise ConfigError("quantizer.sym_grid", self.sym_grid, "full_range with quantizer.sym=false",
                              "the grid is for symmetric codes; asymmetric ones store a zero point per group")
        if self.sym_grid != "full_range" and self.method == "rtn" and self.optimized_rtn:
            raise ConfigError("quantizer.optimized_rtn", self.optimized_rtn, f"false with quantizer.sym_grid={self.sym_grid}",
                              "AutoRound's activation-weighted scale search exists for the full_range grid only")
        size = self.embedding_group_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1)):
            raise ConfigError("quantizer.embedding_group_size", size, "null (= quantizer.group_size), -1 (one scale "
                              "per row) or a positive integer dividing the embedding table's width")

    @property
    def needs_calibration(self) -> bool:
        """Whether the method reads calibration windows (SignRound, AWQ, optimized RTN, the budget scan)."""
        return (self.method in ("signround", "awq") or (self.method == "rtn" and self.optimized_rtn)
                or self.budget_bits is not None)

    @property
    def embedding_bits(self) -> Optional[int]:
        return None if self.embedding == "float" else int(self.embedding[3:])

    def table_group_size(self, width: int) -> int:
        """Columns per scale in an embedding table ``width`` columns wide."""
        size = self.embedding_group_size
        return self.group_size if size is None else width if size == -1 else size


def working_group_sizes(widths: list[int], limit: int = 256) -> list[int]:
    """Group sizes (multiples of 8, at most ``limit``) that divide every width in ``widths``."""
    g = math.gcd(*widths) if widths else 0
    return [d for d in range(8, min(g, limit) + 1, 8) if g % d == 0]


def check_group_size(modules: Mapping[str, torch.nn.Module], group_size: int) -> None:
    """:class:`ConfigError` naming the first module whose input width ``group_size`` does not divide."""
    widths = {name: _input_width(m) for name, m in modules.items()}
    for name, width in widths.items():
        if width % group_size:
            sizes = working_group_sizes(list(widths.values()))
            raise ConfigError("quantizer.group_size", group_size,
                              "one of " + ", ".join(map(str, sizes)) + " (they divide every quantized layer's input width)",
                              f"it does not divide the input width {width} of {name}")


#: under its default ``int`` data type AutoRound keeps every Linear whose output or input size is not a multiple of
#: this in 16-bit, without saying so (``auto_round.compressors.layer_config_resolver``)
AUTOROUND_SHAPE_MULTIPLE = 32


def check_shapes(modules: Mapping[str, torch.nn.Linear], include: list) -> None:
    """:class:`ConfigError` naming the first Linear AutoRound would silently leave unquantized."""
    for name, module in modules.items():
        rows, cols = module.weight.shape
        if rows % AUTOROUND_SHAPE_MULTIPLE or cols % AUTOROUND_SHAPE_MULTIPLE:
            raise ConfigError("quantizer.include", include, "globs selecting Linear layers whose output and input "
                              f"sizes are multiples of {AUTOROUND_SHAPE_MULTIPLE} (AutoRound leaves any other "
                              "unquantized)",
                              f"{name} is {rows} x {cols}; leave it out with quantizer.exclude, or, after structured "
                              f"pruning, keep channels in multiples of {AUTOROUND_SHAPE_MULTIPLE} (pruner.round_to)")


def _input_width(module: torch.nn.Module) -> int:
    if isinstance(module, torch.nn.Embedding):
        return module.embedding_dim
    return int(module.in_features)


def _tied(model: torch.nn.Module) -> bool:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if out is None or inp is None:
        return False
    return bool(getattr(model.config, "tie_word_embeddings", False)) or out.weight is inp.weight


def _embedding_name(model: torch.nn.Module) -> Optional[str]:
    inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return next((n for n, m in model.named_modules() if m is inp), None)


def _output_name(model: torch.nn.Module) -> Optional[str]:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return next((n for n, m in model.named_modules() if m is out), None)


def _skeleton(settings: Mapping[str, Any]) -> torch.nn.Module:
    """The run's model on the meta device (no weights read)."""
    from slimkit.models import model_skeleton

    model_cfg = settings.get("model") or {}
    return model_skeleton(model_cfg.get("name", "smollm2-135m"), model_cfg.get("path"),
                          bool(model_cfg.get("trust_remote_code", False)))


class AutoRoundQuantizer(Stage):
    """Calibrated weight-only quantization with AutoRound; artifact in compressed-tensors pack-quantized format."""

    kind = Kind.QUANTIZER
    name = "autoround"
    artifact_weights = "int_codes"
    Config = AutoRoundConfig
    requires = {"auto_round": "pip install slimkit-autoround (auto-round>=0.16,<0.17)",
                "compressed_tensors": "pip install compressed-tensors>=0.20,<0.21"}

    # --- checks before the model loads ----------------------------------------------------------
    def check_before_load(self, settings: Mapping[str, Any]) -> None:
        cfg = self.config
        samples = (settings.get("data") or {}).get("calibration_samples") if isinstance(settings, Mapping) else None
        if cfg.needs_calibration and samples is not None and samples < 1:
            raise ConfigError("data.calibration_samples", samples,
                              f"at least 1 with quantizer.method={cfg.method}"
                              + (" and quantizer.budget_bits" if cfg.budget_bits is not None else ""),
                              "the method calibrates on those windows (only method=rtn without optimized_rtn "
                              "and budget_bits runs without data)")
        if isinstance(settings, Mapping) and settings.get("model"):
            self._check_model(_skeleton(settings))

    def _check_model(self, model: torch.nn.Module) -> dict[str, Optional[int]]:
        """Plan, tied-embedding and group-size checks on a real or meta-device model; returns the plan."""
        cfg = self.config
        plan = resolve_plan(model, cfg)
        output = _output_name(model)
        if _tied(model) and output is not None and plan.get(output) is not None:
            raise ConfigError("quantizer.exclude", list(cfg.exclude), f"a list keeping {output!r} out (it is tied to "
                              "the input embedding; quantize both with quantizer.embedding=int8 or int4)")
        modules = dict(model.named_modules())
        chosen = {n: modules[n] for n, b in plan.items() if b is not None}
        table = self._table(model)
        if not chosen and table is None:
            raise ConfigError("quantizer.include", list(cfg.include), "globs selecting at least one Linear module")
        if table is not None:
            name, size = table
            width = _input_width(modules[name])
            if cfg.embedding_group_size is None:
                chosen[name] = modules[name]  # on the Linear grid: checked under quantizer.group_size
            elif width % size:
                raise ConfigError("quantizer.embedding_group_size", cfg.embedding_group_size,
                                  "-1 (one scale per row) or one of " + ", ".join(map(str, working_group_sizes([width], width))),
                                  f"it does not divide the width {width} of the embedding table {name}")
        check_group_size(chosen, cfg.group_size)
        if self._data_type == "int":
            check_shapes({n: m for n, m in chosen.items() if isinstance(m, torch.nn.Linear)}, list(cfg.include))
        return plan

    def _table(self, model: torch.nn.Module) -> Optional[tuple[str, int]]:
        """(the input embedding's name, its columns per scale) when ``quantizer.embedding`` quantizes it, else None."""
        name = _embedding_name(model)
        if self.config.embedding_bits is None or name is None:
            return None
        return name, self.config.table_group_size(_input_width(model.get_submodule(name)))

    # --- the stage ------------------------------------------------------------------------------
    def make_quantized(self, name: str, linear: torch.nn.Module, bits: int) -> torch.nn.Module:
        """A round-to-nearest copy of one Linear on this config's grid (for the budget mode's sensitivity scan)."""
        spec = _rtn(linear.weight, bits, self.config.group_size, self.config.sym)
        clone = copy.deepcopy(linear)
        clone.weight.data = spec.dequantize(linear.weight.dtype)
        return clone

    def simulate(self, model: torch.nn.Module):
        """Quantization-aware training on this stage's grid: fake-quantize (straight-through rounding) exactly
        the weights :meth:`apply` will quantize, with its bits, group size, symmetry and embedding table mode;
        returns the function that removes the simulation (see :mod:`slimkit_autoround.simulate`)."""
        from .simulate import simulate_grid

        cfg = self.config
        if cfg.budget_bits is not None:
            raise ConfigError("quantizer.budget_bits", cfg.budget_bits, "null when a distiller trains on this "
                              "quantizer's grid (distiller.qat_grid=quantizer)", "the per-module widths come from "
                              "a sensitivity scan after training; fix them with quantizer.overrides instead")
        plan = self._check_model(model)
        table, grid = self._table(model), None
        if table is not None:
            name, size = table
            output = _output_name(model)
            grid = ([name] + ([output] if _tied(model) and output is not None else []), cfg.embedding_bits, size)
        return simulate_grid(model, plan, cfg.group_size, SYM_GRIDS[cfg.sym_grid] if cfg.sym else "int_asym", grid)

    def apply(self, state) -> dict[str, Any]:
        cfg = self.config
        model = state.model
        windows = state.data.calibration
        if cfg.needs_calibration and windows.shape[0] == 0:
            raise DataError(f"quantizer.method={cfg.method} calibrates on data.calibration, which is empty "
                            "(data.calibration_samples=0); set it to at least 1, or use quantizer.method=rtn")
        self._check_model(model)
        plan, metrics = plan_precision(state, cfg, self.make_quantized, backend=self.name)
        layer_config = {n: ({"bits": b, "group_size": cfg.group_size, "sym": cfg.sym, "data_type": self._data_type}
                            if b is not None else {"bits": 16}) for n, b in plan.items()}
        quantized = [n for n, b in plan.items() if b is not None]
        output = _output_name(model)
        start = time.perf_counter()
        model = self._autoround(state, layer_config, quant_lm_head=output in quantized)
        state.model = model
        metrics["quantize_seconds"] = round(time.perf_counter() - start, 2)
        metrics["calibration_windows"] = int(windows.shape[0]) if cfg.needs_calibration else 0
        modules = dict(model.named_modules())
        for n in quantized:
            m = modules[n]
            spec = _spec_from_autoround(m)
            if cfg.sym_grid == "gptq" and not bool((spec.scale > 0).all()):
                raise RuntimeError(f"{n}: AutoRound returned non-positive scales on the gptq grid; refusing to write "
                                   "an artifact that says quantizer.sym_grid=gptq")
            spec.codes = _codes_checked(n, m, spec)
            setattr(m, ATTRIBUTE, spec)
        table = self._table(model)
        if table is not None:
            quantize_embedding(model, cfg.embedding_bits, table[1])
        metrics.update(self._summary(model))
        state.artifact_writer = self
        return metrics

    @property
    def _data_type(self) -> str:
        """AutoRound's ``data_type`` argument for this config's grid ("int" + ``sym`` is its full-range default)."""
        return "int" if self.config.sym_grid == "full_range" else SYM_GRIDS[self.config.sym_grid]

    def _autoround(self, state, layer_config: dict, quant_lm_head: bool) -> torch.nn.Module:
        from auto_round import AutoRound

        cfg = self.config
        windows = state.data.calibration
        n, seqlen = int(windows.shape[0]), int(state.data.seq_len)
        # explicit masks: AutoRound would otherwise mask every token equal to the pad id (= eos here, which
        # separates articles inside a window); its own default keeps the last position out of the mask too
        mask = torch.ones(1, seqlen, dtype=torch.long)
        mask[:, -1] = 0
        dataset = [{"input_ids": row[None], "attention_mask": mask} for row in windows]
        kwargs: dict[str, Any] = dict(bits=cfg.bits, group_size=cfg.group_size, sym=cfg.sym, data_type=self._data_type,
                                      nsamples=max(n, 1),
                                      seqlen=seqlen, dataset=dataset, device_map="cpu", amp=False, scale_dtype="fp16",
                                      batch_size=max(1, min(cfg.batch_size, n)), seed=state.seed,
                                      layer_config=layer_config, quant_lm_head=quant_lm_head,
                                      # no offload folder (AutoRound would create ./ar_work_space in the cwd)
                                      low_cpu_mem_usage=False, enable_torch_compile=cfg.compile)
        if cfg.method == "signround":
            kwargs.update(iters=cfg.iters, lr=cfg.lr, enable_minmax_tuning=cfg.minmax_tuning, nblocks=cfg.nblocks)
        elif cfg.method == "awq":
            kwargs.update(alg_configs=["awq", "rtn"], iters=0, disable_opt_rtn=not cfg.optimized_rtn)
        else:
            kwargs.update(iters=0, disable_opt_rtn=not cfg.optimized_rtn)
        torch.manual_seed(state.seed)
        # AutoRound refuses asymmetric 8-bit for vLLM's sake; compressed-tensors (what slimkit writes) holds it
        allow = {"AR_ALLOW_W8_ASYM": "1"} if not cfg.sym else {}
        previous = {k: os.environ.get(k) for k in allow}
        os.environ.update(allow)
        try:
            compressor = AutoRound(state.model, state.tokenizer, **kwargs)
            model, _ = compressor.quantize()
        finally:
            for k, v in previous.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return model.float().eval()

    def _summary(self, model: torch.nn.Module) -> dict:
        return {"stored_bits_per_weight": stored_bits_per_weight(model), "stored_bits_scope": STORED_BITS_SCOPE,
                "group_size": self.config.group_size, "sym": self.config.sym, "sym_grid": self.config.sym_grid,
                "method": self.config.method,
                "embedding": self.config.embedding, "embedding_group_size": self.config.embedding_group_size}

    # --- artifact -------------------------------------------------------------------------------
    def save(self, model: torch.nn.Module, directory: Path) -> None:
        save_compressed(copy.deepcopy(model), Path(directory))

    @classmethod
    def load(cls, directory: Path, manifest: Mapping[str, Any]) -> torch.nn.Module:
        """The float32 model the codes stand for, each quantized module carrying its :class:`IntWeights`
        (``slimkit_int_weights``) so exporters find codes and scales in memory too."""
        return load_dequantized(directory)


STORED_BITS_SCOPE = ("every Linear weight and the input embedding (a tied lm_head counted once): integer codes + "
                     "float16 scales (+ zero points when asymmetric); float weights at their dtype's bits")


def stored_bits_per_weight(model: torch.nn.Module) -> float:
    """Average bits the artifact spends per weight over every Linear and the input embedding (a tied lm_head
    counted once), scales and zero points included, float weights at their dtype's bits."""
    seen: set[int] = set()
    total = bits = 0.0
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for module in model.modules():
        if not (isinstance(module, torch.nn.Linear) or module is embedding) or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        count = module.weight.numel()
        spec = getattr(module, ATTRIBUTE, None)
        total += count
        bits += storage_bits(spec, count) if spec is not None else count * torch.finfo(module.weight.dtype).bits
    return bits / total


def quantize_embedding(model: torch.nn.Module, bits: int, group_size: int) -> Optional[str]:
    """Round the input embedding table to symmetric ``bits``-bit codes, one float16 scale per ``group_size``
    columns, in place (a tied lm_head shares the tensor); returns the table's module name."""
    name = _embedding_name(model)
    if name is None:
        return None
    table = model.get_submodule(name)
    spec = _rtn(table.weight, bits, group_size, True)
    table.weight.data.copy_(spec.dequantize(table.weight.dtype))
    setattr(table, ATTRIBUTE, spec)
    return name


def _rtn(weight: torch.Tensor, bits: int, group_size: int, sym: bool) -> IntWeights:
    if sym:
        return round_to_nearest(weight, bits, group_size)
    w = weight.detach().to(torch.float32)
    out, cols = w.shape
    groups = w.view(out, cols // group_size, group_size)
    lo, hi = code_range(bits)
    wmin, wmax = groups.amin(-1).clamp(max=0), groups.amax(-1).clamp(min=0)
    scale = ((wmax - wmin) / (hi - lo)).to(torch.float16)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.clamp(torch.round(lo - wmin / scale.float()), lo, hi)
    codes = torch.clamp(torch.round(groups / scale.float()[..., None]) + zero[..., None], lo, hi)
    return IntWeights(bits, group_size, False, scale, codes.to(torch.int8).view(out, cols), zero.to(torch.int8))


def _spec_from_autoround(module: torch.nn.Module) -> IntWeights:
    """AutoRound leaves ``scale`` (float16, [out, groups]) and ``zp`` (unsigned level) on each module it quantized."""
    bits, group_size, sym = int(module.bits), int(module.group_size), bool(module.sym)
    scale = module.scale.detach().to(torch.float16).reshape(module.weight.shape[0], -1)
    zero = None
    if not sym:
        zp = module.zp if torch.is_tensor(module.zp) else torch.full_like(scale, float(module.zp))
        zero = (zp.detach().float().round() - (1 << (bits - 1))).to(torch.int8).reshape(scale.shape)
    for attr in ("scale", "zp"):
        if hasattr(module, attr):
            delattr(module, attr)
    return IntWeights(bits, group_size, sym, scale, None, zero)


def _codes_checked(name: str, module: torch.nn.Module, spec: IntWeights) -> torch.Tensor:
    """The module's codes, and its weight snapped to exactly ``codes x float16 scale`` (what the artifact stores).

    SignRound already computes with float16 scales; AutoRound's optimized RTN keeps float32 scales, so its weights
    sit a fraction of a step off the float16 grid. That is fine while each weight is unambiguously one code
    (within a quarter step of it); anything further means the scales do not describe the weights, and the stage
    refuses rather than write an artifact that would not reload to this model."""
    weight = module.weight.detach().float()
    out, cols = weight.shape
    steps = weight.view(out, cols // spec.group_size, spec.group_size) / spec.scale.float()[..., None]
    if spec.zero_point is not None:
        steps = steps + spec.zero_point.float()[..., None]
    off = (steps - steps.round()).abs().max().item()
    if off > 0.25:
        raise RuntimeError(f"{name}: AutoRound's weights are {off:.2f} quantization steps away from codes x float16 "
                           "scales; refusing to write an artifact that would not reload to this model")
    codes = codes_of(module.weight, spec)
    spec.codes = codes
    module.weight.data.copy_(spec.dequantize(module.weight.dtype))
    return codes


__all__ = ["AutoRoundConfig", "AutoRoundQuantizer", "IntWeights", "quantize_embedding", "read_int_weights",
           "stored_bits_per_weight", "working_group_sizes"]
