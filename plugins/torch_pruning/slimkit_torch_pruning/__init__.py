"""Structured pruning that physically shrinks the model: MLP channels and attention heads.

Sample config (``conf`` group ``pruner``)::

    pruner: torch_pruning
    pruner.sparsity: 0.3              # fraction of MLP channels (intermediate size) removed
    pruner.heads_sparsity: 0.3333     # fraction of KV groups removed (1 of SmolLM2's 3); 0 = heads untouched
    pruner.heads_structure: kv_groups # kv_groups: a KV head and its query heads; query_heads: query heads per KV head
    pruner.importance: l2             # l2 (weights), activation (weights x calibration inputs), taylor (|w * grad|), random
    pruner.round_to: 1                # kept MLP channels are a multiple of this

or ``slimkit pruner=torch_pruning pruner.sparsity=0.3 pruner.heads_sparsity=0.3333``.

Every selected layer is cut to the same sizes, so the result is an ordinary Hugging Face model:
``intermediate_size``, ``num_attention_heads`` and ``num_key_value_heads`` are patched in its
config (``head_dim`` is pinned, ``hidden_size`` is untouched) and ``AutoModelForCausalLM.from_pretrained``
reloads it. Fractions are of the *original* model's structures (``state.reference``), so applying
0.2 then 0.3 leaves 30% removed in total, and re-applying the same value changes nothing.
Excluding layers leaves per-layer sizes a stock config cannot describe; such a model is saved with
its sizes recorded in the config and reloaded by this plugin's :meth:`StructuredPruner.load`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, List, Mapping

import torch

from slimkit import Kind, Stage, StageConfig, check_choice, check_range
from slimkit.core.errors import ArtifactError, ConfigError
from slimkit.models import count_parameters
from slimkit.toolkit.modules import select_modules

from .structure import (Arch, LayerDims, UnsupportedArchitectureError, inspect, layer_scores, prune_layer,
                        input_energy, query_keep, select_keep, target_keep, taylor_gradients)

IMPORTANCES = ("l2", "activation", "taylor", "random")
HEAD_STRUCTURES = ("kv_groups", "query_heads")
#: how far a requested fraction may be from the nearest realisable one (0.33 stands for 1/3)
TOLERANCE = 0.01
#: config key recording per-layer sizes when they are not uniform
LAYER_DIMS_KEY = "slimkit_layer_dims"

__all__ = ["StructuredPruner", "StructuredPruningConfig", "UnsupportedArchitectureError"]


@dataclasses.dataclass
class StructuredPruningConfig(StageConfig):
    """Structured pruning settings; fractions count structures of the original model."""

    #: fraction of MLP channels (gate/up outputs, down inputs) removed in each selected layer, 0 <= s < 1
    sparsity: float = 0.3
    #: fraction of attention structures removed (see ``heads_structure``); 0 leaves attention untouched
    heads_sparsity: float = 0.0
    #: 'kv_groups' removes KV heads with their query heads; 'query_heads' removes query heads within every KV group
    heads_structure: str = "kv_groups"
    #: 'l2' (sum of squared weights of the coupled rows/columns), 'activation' (output-projection column norm x input
    #: norm on the calibration slice), 'taylor' (|w * dL/dw| on the calibration slice), 'random'
    importance: str = "l2"
    #: kept MLP channels are a multiple of this (e.g. 64 for friendlier matmul shapes)
    round_to: int = 1
    #: glob patterns of decoder layer names (``model.layers.<i>``) to prune
    include: List[str] = dataclasses.field(default_factory=lambda: ["*"])
    #: glob patterns of decoder layer names to leave whole (makes per-layer sizes non-uniform)
    exclude: List[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        check_range("pruner.sparsity", self.sparsity, 0.0, 1.0, high_open=True)
        check_range("pruner.heads_sparsity", self.heads_sparsity, 0.0, 1.0, high_open=True)
        check_choice("pruner.heads_structure", self.heads_structure, HEAD_STRUCTURES)
        check_choice("pruner.importance", self.importance, IMPORTANCES)
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError("pruner.round_to", self.round_to, "an integer >= 1")


class StructuredPruner(Stage):
    """Remove MLP channels and attention heads (grouped-query aware), uniformly per layer.

    ``apply`` plans everything first (architecture check, realisable fractions, scores) and only
    then cuts, so a bad ratio or an unsupported model leaves the model untouched. See the module
    docstring for a sample config.
    """

    kind = Kind.PRUNER
    name = "torch_pruning"
    Config = StructuredPruningConfig
    requires = {"torch_pruning": "pip install torch-pruning"}
    supports = {"dtypes": frozenset({"float32", "bfloat16", "float16"}), "devices": frozenset({"cpu"})}

    # --- planning ----------------------------------------------------------------------------------
    def _selected(self, model: torch.nn.Module, arch: Arch) -> list[int]:
        layer_types = tuple({type(layer) for layer in arch.layers})
        chosen = select_modules(model, self.config.include, self.config.exclude, types=layer_types, prefix="pruner")
        ids = {id(m) for m in chosen.values()}
        return [i for i, layer in enumerate(arch.layers) if id(layer) in ids]

    def _targets(self, original: LayerDims, current: LayerDims) -> LayerDims:
        """Sizes to cut one layer to (never larger than it is now)."""
        cfg = self.config
        keep_mlp = target_keep("pruner.sparsity", cfg.sparsity, original.intermediate, cfg.round_to, TOLERANCE,
                               "MLP channels")
        kv, per_kv = original.kv_heads, original.queries_per_kv
        if cfg.heads_structure == "kv_groups":
            if original.kv_heads == 1 and cfg.heads_sparsity > 0:
                raise ConfigError("pruner.heads_sparsity", cfg.heads_sparsity, "0 with heads_structure=kv_groups",
                                  "the model has a single KV head; set pruner.heads_structure=query_heads "
                                  "to remove query heads within it")
            kv = target_keep("pruner.heads_sparsity", cfg.heads_sparsity, original.kv_heads, 1, TOLERANCE,
                             "KV heads (each with its query heads)")
        else:
            per_kv = target_keep("pruner.heads_sparsity", cfg.heads_sparsity, original.queries_per_kv, 1, TOLERANCE,
                                 "query heads per KV head")
        kv, per_kv = min(kv, current.kv_heads), min(per_kv, current.queries_per_kv)
        return LayerDims(min(keep_mlp, current.intermediate), kv * per_kv, kv)

    @staticmethod
    def _original_dims(state, arch: Arch) -> list[LayerDims]:
        """Per-layer sizes of the original model (``state.reference``), else of the model as it is."""
        reference = getattr(state, "reference", None)
        if reference is not None and reference is not state.model:
            try:
                ref = inspect(reference)
            except ConfigError:
                ref = None
            if ref is not None and len(ref.dims) == len(arch.dims) and ref.head_dim == arch.head_dim:
                return ref.dims
        return arch.dims

    # --- the stage ---------------------------------------------------------------------------------
    def apply(self, state) -> dict[str, Any]:
        cfg, model = self.config, state.model
        arch = inspect(model)                                   # unsupported -> error, nothing changed
        selected = self._selected(model, arch)
        original = self._original_dims(state, arch)
        targets = {i: self._targets(original[i], arch.dims[i]) for i in selected}   # bad ratio -> error here
        params_before = count_parameters(model)

        grads = energy = None
        if any(t != arch.dims[i] for i, t in targets.items()):
            if cfg.importance == "taylor":
                grads = taylor_gradients(model, arch, state.data.calibration)
            elif cfg.importance == "activation":
                energy = input_energy(model, arch, state.data.calibration)
        generator = torch.Generator().manual_seed(state.seed)
        plans = {}
        for i, target in targets.items():
            dims = arch.dims[i]
            scores = layer_scores(arch.layers[i], dims, arch.head_dim, cfg.importance, grads, generator,
                                  energy[i] if energy else None)
            kv_keep = select_keep(scores["kv"], target.kv_heads)
            q_keep = query_keep(scores["q"], kv_keep, dims.queries_per_kv, target.queries_per_kv)
            plans[i] = (select_keep(scores["mlp"], target.intermediate), kv_keep, q_keep)
        del grads, energy

        heads_kept = {}
        for i, (mlp_keep, kv_keep, q_keep) in plans.items():
            before = arch.dims[i]
            arch.dims[i] = prune_layer(arch.layers[i], before, arch.head_dim, mlp_keep, kv_keep, q_keep)
            if arch.dims[i].heads < before.heads:
                heads_kept[f"model.layers.{i}"] = q_keep.tolist()
        uniform = self._patch_config(model, arch)
        if not uniform:
            state.artifact_writer = self
        elif isinstance(state.artifact_writer, StructuredPruner):
            state.artifact_writer = None                        # an earlier non-uniform step is now uniform

        params_after = count_parameters(model)
        per_layer = {f"model.layers.{i}": dataclasses.asdict(d) for i, d in enumerate(arch.dims)}
        return {
            "parameters_before": params_before,
            "parameters_after": params_after,
            "parameter_ratio": params_after / params_before,
            "pruned_layers": len(selected),
            "uniform": uniform,
            "intermediate_size": model.config.intermediate_size,
            "num_attention_heads": model.config.num_attention_heads,
            "num_key_value_heads": model.config.num_key_value_heads,
            "mlp_sparsity_vs_original": 1 - sum(d.intermediate for d in arch.dims) / sum(d.intermediate for d in original),
            "heads_sparsity_vs_original": 1 - sum(d.heads for d in arch.dims) / sum(d.heads for d in original),
            "per_layer": per_layer,
            "heads_kept": heads_kept,
        }

    @staticmethod
    def _patch_config(model: torch.nn.Module, arch: Arch) -> bool:
        """Write the new sizes into ``model.config``; returns whether every layer has the same sizes."""
        config = model.config
        uniform = all(d == arch.dims[0] for d in arch.dims)
        first = arch.dims[0] if uniform else LayerDims(max(d.intermediate for d in arch.dims),
                                                      max(d.heads for d in arch.dims), max(d.kv_heads for d in arch.dims))
        config.head_dim = arch.head_dim                         # pinned: it no longer equals hidden_size // heads
        config.intermediate_size = first.intermediate
        config.num_attention_heads = first.heads
        config.num_key_value_heads = first.kv_heads
        if uniform:
            if hasattr(config, LAYER_DIMS_KEY):
                delattr(config, LAYER_DIMS_KEY)
        else:
            setattr(config, LAYER_DIMS_KEY, [[d.intermediate, d.heads, d.kv_heads] for d in arch.dims])
        return uniform

    # --- artifacts: only needed when per-layer sizes differ ------------------------------------------
    @classmethod
    def load(cls, directory: Path, manifest: Mapping[str, Any]) -> torch.nn.Module:
        """Rebuild a model saved with non-uniform layer sizes (uniform ones load with plain from_pretrained)."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModelForCausalLM

        from slimkit.core.artifact import saved_dtype
        from slimkit.models import load_pretrained

        directory = Path(directory)
        config = AutoConfig.from_pretrained(str(directory))
        layer_dims = getattr(config, LAYER_DIMS_KEY, None)
        if not layer_dims:
            return load_pretrained(directory)
        model = AutoModelForCausalLM.from_config(config, dtype=saved_dtype(config))
        arch = inspect(model)
        if len(layer_dims) != len(arch.layers):
            raise ArtifactError(f"{directory}: {LAYER_DIMS_KEY} lists {len(layer_dims)} layers, the config builds {len(arch.layers)}")
        for i, (inter, heads, kv) in enumerate(layer_dims):
            dims = arch.dims[i]
            per_kv = heads // kv
            q_keep = torch.cat([torch.arange(per_kv) + g * dims.queries_per_kv for g in range(kv)])
            prune_layer(arch.layers[i], dims, arch.head_dim, torch.arange(inter), torch.arange(kv), q_keep)
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise ArtifactError(f"{directory} holds no .safetensors weights")
        weights = {}
        for f in files:
            weights.update(load_file(str(f)))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        if unexpected or set(missing) - tied:
            raise ArtifactError(f"{directory}: weights do not match the recorded layer sizes "
                                f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})")
        model.tie_weights()
        return model.eval()
