"""Run onnxruntime-genai's model builder, reading RoPE set per attention type.

``python -m slimkit_onnx.build`` takes the builder's own command line (``python -m
onnxruntime_genai.models.builder -i ... -o ... -p ...``) and runs the builder's own steps
(``get_args`` → ``parse_extra_options`` → ``create_model``) with one change in between: a config that
sets RoPE per attention type (Gemma-3 under transformers 5: ``rope_parameters = {'full_attention': {...},
'sliding_attention': {...}}``) is handed to the builder in the flat form it reads — the full-attention
setting as ``rope_parameters``/``rope_theta`` and the sliding layers' base as ``rope_local_base_freq``,
the names transformers 4 used and the builder's Gemma-3 code still expects. Only default (unscaled) RoPE
in both attention types is flattened (:func:`flat_rope`); anything else is refused by the exporter
before any stage runs. ``--context_length N`` (slimkit's, taken off the command line before the builder reads
it) sets the longest sequence the export serves: the builder's RoPE tables and onnxruntime-genai's context.
"""

from __future__ import annotations

from typing import Any, Mapping

#: the attention types Gemma-3's config names, and the one whose RoPE the builder's global cache takes
FULL, SLIDING = "full_attention", "sliding_attention"


def flat_rope(rope: Any) -> dict[str, Any] | None:
    """The flat settings the builder reads for a per-attention-type RoPE, or ``None`` when the config is
    not one the builder can take that way (anything but default RoPE in exactly those two types)."""
    if not isinstance(rope, Mapping) or set(rope) != {FULL, SLIDING}:
        return None
    full, sliding = rope[FULL], rope[SLIDING]
    if not all(isinstance(r, Mapping) and r.get("rope_type") == "default" and set(r) <= {"rope_type", "rope_theta"}
               for r in (full, sliding)):
        return None  # e.g. linear scaling on the global layers: the builder would apply it to both caches
    return {"rope_parameters": dict(full), "rope_theta": float(full.get("rope_theta", 10000.0)),
            "rope_local_base_freq": float(sliding.get("rope_theta", 10000.0))}


def per_attention_type(rope: Any) -> bool:
    """Whether ``rope_parameters`` is set per attention type (no top-level ``rope_type``)."""
    return isinstance(rope, Mapping) and bool(rope) and "rope_type" not in rope


def main() -> None:
    import argparse
    import sys

    from onnxruntime_genai.models import builder

    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--context_length", type=int, default=None)
    mine, rest = own.parse_known_args(sys.argv[1:])
    sys.argv = [sys.argv[0], *rest]  # the rest is the builder's own command line
    args = builder.get_args()
    options = builder.parse_extra_options(
        args.model_name, args.input, args.output, args.precision, args.execution_provider, args.cache_dir,
        args.extra_options, builder_config_version=args.builder_config_version, target_options=args.target_options,
        drafter_options=args.drafter_options, speculative_options=args.speculative_options,
        runtime_config=args.runtime_config, search=args.search)
    config = options["hf_details"]["hf_config"]
    rope = getattr(config, "rope_parameters", None)
    if per_attention_type(rope):
        flat = flat_rope(rope)
        if flat is None:  # the exporter refuses these before any stage; this guards a direct call
            raise SystemExit(f"slimkit_onnx.build: rope_parameters={dict(rope)!r} cannot be given to the builder")
        for key, value in flat.items():
            setattr(config, key, value)
    if mine.context_length is not None:  # the builder sizes its RoPE tables and genai's context from this
        config.max_position_embeddings = mine.context_length
        if hasattr(config, "seq_length"):
            config.seq_length = mine.context_length
    builder.create_model(args.model_name, args.input, args.output, args.precision, args.execution_provider,
                         args.cache_dir, **options)


if __name__ == "__main__":
    main()
