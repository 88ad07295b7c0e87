"""What an artifact's weights are, so an exporter can decide what it carries, converts or refuses.

A stage that writes the artifact declares the form of the weights it leaves (``Stage.artifact_weights``);
an exporter asks for it by the writer's name before any model loads (:func:`artifact_weights`) and, at
export time, reads integer codes from the loaded model (:func:`int_weight_modules`). No exporter keeps
a list of quantizer names.

Forms:

- ``float`` (the default): plain float tensors; a runtime quantizes them if asked.
- ``dequantizable``: tensor subclasses that dequantize themselves exactly (optimum-quanto's QTensor).
- ``int_codes``: float weights that equal integer codes times per-group scales exactly, each such module
  carrying its codes as :data:`INT_WEIGHTS` (an object with the fields of :class:`IntCodes`); a format
  with the same grid holds them without re-quantization.
- ``runtime_kernels``: packed weights or fused kernels only the writing backend runs (bnb, the int8 W8A8
  quantizer); other runtimes cannot take them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

FLOAT = "float"
DEQUANTIZABLE = "dequantizable"
INT_CODES = "int_codes"
RUNTIME_KERNELS = "runtime_kernels"
FORMS = (FLOAT, DEQUANTIZABLE, INT_CODES, RUNTIME_KERNELS)

#: the module attribute that holds a module's integer codes in memory
INT_WEIGHTS = "slimkit_int_weights"

__all__ = [
    "DEQUANTIZABLE",
    "FLOAT",
    "FORMS",
    "INT_CODES",
    "INT_WEIGHTS",
    "RUNTIME_KERNELS",
    "IntCodes",
    "artifact_weights",
    "int_weight_modules",
    "refuse_runtime_kernels",
    "summarize_reasons",
]


@runtime_checkable
class IntCodes(Protocol):
    """One module's integer weights: ``weight = (codes - zero_point) * scale`` per group of ``group_size``
    input features (``zero_point`` is None when symmetric)."""

    bits: int
    group_size: int
    symmetric: bool
    #: [out, in / group_size], float16
    scale: torch.Tensor
    #: [out, in], signed integers in [-2**(bits-1), 2**(bits-1) - 1]
    codes: torch.Tensor
    zero_point: torch.Tensor | None


def artifact_weights(writer: Any) -> str:
    """The weight form (one of :data:`FORMS`) of an artifact written by ``writer``: a backend name (looked
    up among the installed pruners, distillers and quantizers), a stage or stage class, or None (no writer:
    float). An unknown name is taken as float; the stage that uses it fails on its own name earlier."""
    if writer is None:
        return FLOAT
    if isinstance(writer, str):
        from slimkit.core.errors import SlimkitError
        from slimkit.core.plugin import Kind
        from slimkit.core.registry import default_registry

        registry = default_registry()
        for kind in (Kind.QUANTIZER, Kind.PRUNER, Kind.DISTILLER):
            if writer in registry.names(kind):
                try:
                    writer = registry.get(kind, writer)
                except SlimkitError:
                    return FLOAT
                break
        else:
            return FLOAT
    form = getattr(writer, "artifact_weights", FLOAT)
    return form if form in FORMS else FLOAT


def int_weight_modules(model: torch.nn.Module) -> dict[str, IntCodes]:
    """``{module name: its integer codes}`` for every module of ``model`` that carries :data:`INT_WEIGHTS`
    (a tied output matrix shares the input embedding's codes and is not listed again)."""
    return {name: spec for name, module in model.named_modules()
            if (spec := getattr(module, INT_WEIGHTS, None)) is not None and getattr(spec, "codes", None) is not None}


def refuse_runtime_kernels(exporter: str, writer: Any, cannot: str, alternatives: str) -> None:
    """Raise the ConfigError every exporter gives when ``writer`` leaves packed weights or kernels only its own
    backend runs (``RUNTIME_KERNELS``): ``cannot`` says what the runtime cannot do with them, ``alternatives`` what
    works instead. Does nothing for any other artifact."""
    if artifact_weights(writer) != RUNTIME_KERNELS:
        return
    from slimkit.core.errors import ConfigError

    raise ConfigError("exporter", exporter, "an artifact of float weights, exactly dequantizable weights (quanto) or "
                      "integer codes (autoround)",
                      f"quantizer={writer} writes packed weights or kernels only its own backend runs, which {cannot}. "
                      f"Alternatives: {alternatives}")


def summarize_reasons(kept: dict[str, str]) -> str:
    """``{module: why its codes were not carried}`` as one phrase: ``"2x <why>, 1x <why>"``."""
    counts: dict[str, int] = {}
    for why in kept.values():
        counts[why] = counts.get(why, 0) + 1
    return ", ".join(f"{n}x {why}" for why, n in sorted(counts.items()))
