"""Structured pruning that physically shrinks the model: MLP channels and attention heads.

Sample config (``conf`` group ``pruner``)::

    pruner: torch_pruning
    pruner.sparsity: 0.3              # fraction of the selected Linear weights removed (MLP channels make it up)
    pruner.heads_sparsity: 0.3333     # fraction of KV groups removed (1 of SmolLM2's 3); 0 = heads untouched
    pruner.include: ["*.mlp.*"]       # Linear globs: a layer's MLP (or attention) is cut when all its projections match
    pruner.heads_structure: kv_groups # kv_groups: a KV head and its query heads; query_heads: query heads per KV head
    pruner.importance: l2             # l2 (weights), activation (weights x calibration inputs), taylor (|w * grad|), random
    pruner.round_to: 1                # kept MLP channels are a multiple of this
    pruner.recovery_steps: 0          # training steps right after the cut (kd distiller: float KD from the original)

or ``slimkit pruner=torch_pruning pruner.sparsity=0.3 pruner.heads_sparsity=0.3333``.

``sparsity`` means what it means for every pruner: the fraction of the selected Linear modules' weights
(of the original model) that is removed. Heads are removed as ``heads_sparsity`` says; the MLP channel
fraction is then chosen so that the removed weights reach ``sparsity`` (rounded to whole channels, and
to ``round_to``), and the metrics report ``achieved_sparsity`` and ``mlp_channel_fraction``.

Families: every ``model_type`` in :mod:`slimkit.toolkit.families` (Llama, Mistral, Qwen2/3, Gemma-3,
Phi-3's fused ``qkv_proj``/``gate_up_proj``, GPT-2's ``Conv1D``, OPT, GPT-NeoX). Attention heads are removed
only where the config pins ``head_dim``; GPT-2, OPT and GPT-NeoX derive it from ``hidden_size / heads``, so
for them only MLP channels are pruned and ``heads_sparsity > 0`` is refused before the model loads.

Every selected layer is cut to the same sizes, so the result is an ordinary Hugging Face model:
the MLP width and head counts are patched in its config under each family's own keys
(``intermediate_size``, ``ffn_dim``, ``n_inner``, ``num_attention_heads``, ``num_key_value_heads``; ``head_dim``
is pinned, ``hidden_size`` is untouched) and ``AutoModelForCausalLM.from_pretrained``
reloads it. Fractions are of the *original* model's structures (``state.reference``), so applying
0.2 then 0.3 leaves 30% removed in total, and re-applying the same value changes nothing.
Excluding layers leaves per-layer sizes a stock config cannot describe; such a model is saved with
its sizes recorded in the config and reloaded by this plugin's :meth:`StructuredPruner.load`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch

from slimkit import Kind, PrunerConfig, Stage, check_choice, check_range
from slimkit.core.plugin import ranged
from slimkit.core.errors import ArtifactError, ConfigError
from slimkit.models import count_parameters
from slimkit.toolkit.modules import select_modules
from slimkit.toolkit.pruning import recovery_step

from .structure import (ATTN_ROLES, MLP_ROLES, Arch, LayerDims, UnsupportedArchitectureError, check_config, inspect,
                        layer_scores, nearest_valid, prune_layer, input_energy, query_keep, select_keep, target_keep,
                        taylor_gradients)

IMPORTANCES = ("l2", "activation", "taylor", "random")
HEAD_STRUCTURES = ("kv_groups", "query_heads")
#: how far a requested fraction may be from the nearest realisable one (0.33 stands for 1/3)
TOLERANCE = 0.01
#: config key recording per-layer sizes when they are not uniform
LAYER_DIMS_KEY = "slimkit_layer_dims"

__all__ = ["StructuredPruner", "StructuredPruningConfig", "UnsupportedArchitectureError"]


@dataclasses.dataclass
class StructuredPruningConfig(PrunerConfig):
    """Structured pruning settings; fractions count weights or structures of the original model.
    ``overrides`` (per-module sparsity) is not supported: every selected layer is cut to the same sizes."""

    sparsity: float = ranged(0.3, 0.0, 1.0, high_open=True)
    #: fraction of attention structures removed (see ``heads_structure``); 0 leaves attention untouched
    heads_sparsity: float = 0.0
    #: 'kv_groups' removes KV heads with their query heads; 'query_heads' removes query heads within every KV group
    heads_structure: str = "kv_groups"
    #: 'l2' (sum of squared weights of the coupled rows/columns), 'activation' (output-projection column norm x input
    #: norm on the calibration slice), 'taylor' (|w * dL/dw| on the calibration slice), 'random'
    importance: str = "l2"
    #: kept MLP channels are a multiple of this (e.g. 64 for friendlier matmul shapes)
    round_to: int = 1
    #: training steps right after the cut, through the run's recovery step: float distillation from the original
    #: when a kd distiller is configured (its ``recovery_lr``), plain fine-tuning otherwise; 0 = none
    recovery_steps: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.overrides:
            raise ConfigError("pruner.overrides", self.overrides, "{} for torch_pruning",
                              "structured pruning cuts every selected layer to the same sizes; use include/exclude")
        check_range("pruner.heads_sparsity", self.heads_sparsity, 0.0, 1.0, high_open=True)
        check_choice("pruner.heads_structure", self.heads_structure, HEAD_STRUCTURES)
        check_choice("pruner.importance", self.importance, IMPORTANCES)
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError("pruner.round_to", self.round_to, "an integer >= 1")
        if not isinstance(self.recovery_steps, int) or self.recovery_steps < 0:
            raise ConfigError("pruner.recovery_steps", self.recovery_steps, "an integer >= 0")


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
    def _selection(self, model: torch.nn.Module, arch: Arch) -> tuple[dict[str, torch.nn.Module], dict[int, set[str]]]:
        """The selected Linear modules, and per decoder layer which of its parts ('mlp', 'attn') are
        selected whole. A part selected in part is a ConfigError (it cannot be cut consistently)."""
        chosen = select_modules(model, self.config.include, self.config.exclude, prefix="pruner")
        ids = {id(m) for m in chosen.values()}
        parts: dict[int, set[str]] = {}
        names = {id(m): n for n, m in model.named_modules()}
        for i, block in enumerate(arch.blocks):
            projections = block.projections()
            for part, roles in (("mlp", MLP_ROLES), ("attn", ATTN_ROLES)):
                modules = [projections[r] for r in roles if r in projections]
                hit = [names[id(m)].rsplit(".", 1)[-1] for m in modules if id(m) in ids]
                if hit and len(hit) < len(modules):
                    raise ConfigError("pruner.include", self.config.include,
                                      f"patterns that select all of {arch.family.layers}.{i}'s {part} projections "
                                      f"({', '.join(names[id(m)].rsplit('.', 1)[-1] for m in modules)}) or none of "
                                      "them", f"they select only {', '.join(hit)}")
                if hit:
                    parts.setdefault(i, set()).add(part)
        return chosen, parts

    @staticmethod
    def _layer_weights(dims: LayerDims, hidden: int, head_dim: int, gated: bool = True) -> dict[str, int]:
        return {"mlp": (3 if gated else 2) * hidden * dims.intermediate,
                "attn": hidden * head_dim * 2 * (dims.heads + dims.kv_heads)}

    @staticmethod
    def _outside_parts(chosen: Mapping[str, torch.nn.Module], parts: Mapping[int, set[str]], arch: Arch) -> int:
        """Weights of selected Linear modules this pruner cannot cut (outside the selected layer parts, e.g.
        lm_head when included): they count in the denominator of ``sparsity`` and are never removed."""
        prefixes = tuple(f"{arch.family.layers}.{i}." for i in parts)
        return sum(m.weight.numel() for n, m in chosen.items() if not n.startswith(prefixes))

    def _selected_weights(self, dims: list[LayerDims], parts: Mapping[int, set[str]], hidden: int, arch: Arch) -> int:
        return sum(self._layer_weights(dims[i], hidden, arch.head_dim, arch.family.gated)[p]
                   for i, ps in parts.items() for p in ps)

    def _mlp_fraction(self, parts, original: list[LayerDims], arch: Arch, hidden: int, other: int) -> float:
        """The MLP channel fraction that makes the removed weights reach ``sparsity`` of the selected weights."""
        cfg = self.config
        total = other + self._selected_weights(original, parts, hidden, arch)
        attn_removed = 0
        for i, ps in parts.items():
            if "attn" in ps:
                heads, kv = self._head_targets(original[i], arch.dims[i])
                attn_removed += (self._layer_weights(original[i], hidden, arch.head_dim)["attn"]
                                 - self._layer_weights(LayerDims(0, heads, kv), hidden, arch.head_dim)["attn"])
        mlp_total = sum(self._layer_weights(original[i], hidden, arch.head_dim, arch.family.gated)["mlp"]
                        for i, ps in parts.items() if "mlp" in ps)
        wanted = cfg.sparsity * total - attn_removed
        if wanted <= 0:
            return 0.0
        if wanted >= mlp_total:
            most = (attn_removed + mlp_total) / total if total else 0.0
            raise ConfigError("pruner.sparsity", cfg.sparsity, f"less than {most:.3f} with these include/exclude and "
                              f"heads_sparsity={cfg.heads_sparsity:g}",
                              "the selected MLP channels and heads hold too few of the selected weights")
        return wanted / mlp_total

    def _head_targets(self, original: LayerDims, current: LayerDims) -> tuple[int, int]:
        """(query heads, KV heads) to keep in one layer."""
        cfg = self.config
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
        return kv * per_kv, kv

    def _targets(self, original: LayerDims, current: LayerDims, parts: set[str], mlp_fraction: float) -> LayerDims:
        """Sizes to cut one layer to (never larger than it is now)."""
        step = self.config.round_to
        keep_mlp = original.intermediate
        if "mlp" in parts and mlp_fraction > 0:
            wanted = original.intermediate * (1 - mlp_fraction)
            keep_mlp = max(step, int(round(wanted / step)) * step) if step > 1 else max(1, int(round(wanted)))
            keep_mlp = min(keep_mlp, original.intermediate)
            if step > 1 and abs((1 - keep_mlp / original.intermediate) - mlp_fraction) > TOLERANCE:
                nearest = nearest_valid(mlp_fraction, original.intermediate, step)
                raise ConfigError("pruner.sparsity", self.config.sparsity,
                                  f"a value whose MLP channel fraction ({mlp_fraction:.4g}) is realisable in multiples "
                                  f"of pruner.round_to={step}; nearest MLP channel fractions: "
                                  + " or ".join(f"{r:g}" for r in nearest),
                                  f"{original.intermediate} MLP channels per layer")
        heads, kv = self._head_targets(original, current) if "attn" in parts else (current.heads, current.kv_heads)
        return LayerDims(min(keep_mlp, current.intermediate), heads, kv)

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

    def check_model(self, config: Any) -> None:
        """Before any weights load: the model's family is described in :mod:`slimkit.toolkit.families`, and
        attention heads are only removed where the config can describe fewer of them."""
        check_config(config, self.config.heads_sparsity)

    # --- the stage ---------------------------------------------------------------------------------
    def apply(self, state) -> dict[str, Any]:
        cfg, model = self.config, state.model
        self.check_model(model.config)                          # unsupported -> error, nothing changed
        arch = inspect(model)
        chosen, parts = self._selection(model, arch)
        selected = sorted(parts)
        if cfg.heads_sparsity > 0 and not any("attn" in ps for ps in parts.values()):
            raise ConfigError("pruner.heads_sparsity", cfg.heads_sparsity, "0 when no attention projections are selected",
                              f"pruner.include={list(cfg.include)} selects no layer's q/k/v/o projections")
        original = self._original_dims(state, arch)
        hidden = model.config.hidden_size
        other = self._outside_parts(chosen, parts, arch)
        fraction = self._mlp_fraction(parts, original, arch, hidden, other)  # unreachable -> error here
        targets = {i: self._targets(original[i], arch.dims[i], parts[i], fraction) for i in selected}
        heads_after = {targets[i].heads if i in targets else d.heads for i, d in enumerate(arch.dims)}
        if len(heads_after) > 1 and not arch.family.per_layer_heads:
            raise ConfigError("pruner.exclude", list(cfg.exclude), f"patterns that select every layer's attention "
                              f"when pruner.heads_sparsity > 0 on model_type {model.config.model_type!r}",
                              f"{arch.family.label}'s attention reads its head count from the shared config, so all "
                              "layers must keep the same number of heads")
        params_before = count_parameters(model)
        selected_original = other + self._selected_weights(original, parts, hidden, arch)

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
            if target == dims:  # already at its sizes (e.g. the same fraction applied again): nothing to score
                continue
            scores = layer_scores(arch, i, cfg.importance, grads, generator, energy[i] if energy else None)
            kv_keep = select_keep(scores["kv"], target.kv_heads)
            q_keep = query_keep(scores["q"], kv_keep, dims.queries_per_kv, target.queries_per_kv)
            plans[i] = (select_keep(scores["mlp"], target.intermediate), kv_keep, q_keep)
        del grads, energy

        heads_kept = {}
        for i, (mlp_keep, kv_keep, q_keep) in plans.items():
            before = arch.dims[i]
            prune_layer(arch, i, mlp_keep, kv_keep, q_keep)
            if arch.dims[i].heads < before.heads:
                heads_kept[f"{arch.family.layers}.{i}"] = q_keep.tolist()
        uniform = self._patch_config(model, arch)
        if not uniform:
            state.artifact_writer = self
        elif isinstance(state.artifact_writer, StructuredPruner):
            state.artifact_writer = None                        # an earlier non-uniform step is now uniform

        recovery = recovery_step(state, cfg.recovery_steps) if plans and cfg.recovery_steps else None
        params_after = count_parameters(model)
        per_layer = {f"{arch.family.layers}.{i}": dataclasses.asdict(d) for i, d in enumerate(arch.dims)}
        selected_after = other + self._selected_weights(arch.dims, parts, hidden, arch)
        family, config = arch.family, model.config
        return {
            **({"recovery": recovery} if recovery is not None else {}),
            "achieved_sparsity": 1 - selected_after / selected_original if selected_original else 0.0,
            "mlp_channel_fraction": fraction,
            "parameters_before": params_before,
            "parameters_after": params_after,
            "parameter_ratio": params_after / params_before,
            "pruned_layers": len(selected),
            "uniform": uniform,
            "model_type": config.model_type,
            "intermediate_size": getattr(config, family.intermediate_key),
            "num_attention_heads": getattr(config, family.heads_key),
            "num_key_value_heads": getattr(config, family.kv_heads_key or family.heads_key),
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
        family = arch.family
        if family.head_dim_key:
            setattr(config, family.head_dim_key, arch.head_dim)  # pinned: it no longer equals hidden_size // heads
        setattr(config, family.intermediate_key, first.intermediate)
        setattr(config, family.heads_key, first.heads)
        if family.kv_heads_key:
            setattr(config, family.kv_heads_key, first.kv_heads)
        if uniform:
            if hasattr(config, LAYER_DIMS_KEY):
                delattr(config, LAYER_DIMS_KEY)
        else:
            setattr(config, LAYER_DIMS_KEY, [[d.intermediate, d.heads, d.kv_heads] for d in arch.dims])
        return uniform

    # --- artifacts: only needed when per-layer sizes differ ------------------------------------------
    def save(self, model: torch.nn.Module, directory: Path) -> None:
        """Non-uniform sizes: config + weights under the model's own parameter names (``save_pretrained`` may
        rename some, e.g. GPT-NeoX's ``lm_head`` to ``embed_out``, which only ``from_pretrained`` maps back)."""
        if not getattr(model.config, LAYER_DIMS_KEY, None):
            return super().save(model, directory)
        from slimkit.toolkit.storage import save_sparse_model

        save_sparse_model(model, directory)

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
        if len(layer_dims) != len(arch.blocks):
            raise ArtifactError(f"{directory}: {LAYER_DIMS_KEY} lists {len(layer_dims)} layers, the config builds {len(arch.layers)}")
        for i, (inter, heads, kv) in enumerate(layer_dims):
            dims = arch.dims[i]
            per_kv = heads // kv
            q_keep = torch.cat([torch.arange(per_kv) + g * dims.queries_per_kv for g in range(kv)])
            prune_layer(arch, i, torch.arange(inter), torch.arange(kv), q_keep)
        from slimkit.toolkit.storage import WEIGHTS, load_tensors

        if (directory / WEIGHTS).is_file():
            weights = load_tensors(directory / WEIGHTS)
        else:  # written by save_pretrained (before save() wrote model.slimkit.safetensors)
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
