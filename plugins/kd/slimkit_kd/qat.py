"""Quantization-aware training with optimum-quanto's own quantizer.

Before ``freeze``, quanto's ``QLinear`` re-quantizes its float weight on every forward pass with a
straight-through estimator, so gradients reach the float weights: exactly the weight quantization
(int4 affine, groups of up to 128; int8 symmetric per channel) that a later ``quantizer=quanto``
stage applies for real. After training the modules are turned back into plain ``nn.Linear``
holding the trained float weights. GPT-2's ``Conv1D`` layers (which quanto skips) train as the
equivalent ``nn.Linear`` (the same weights, transposed) and are turned back into ``Conv1D`` afterwards,
so the model keeps its own layout and ``save_pretrained``/``from_pretrained`` still round-trip.
"""

from __future__ import annotations

from typing import Sequence

import torch

from slimkit.toolkit.modules import as_conv1d, conv1d_to_linear, select_modules

QTYPES = {8: "qint8", 4: "qint4", 2: "qint2"}


def enable_qat(model: torch.nn.Module, bits: int, exclude: Sequence[str]) -> int:
    """Swap the selected Linear layers for quanto QLinear (fake-quantized weights); return how many."""
    from optimum import quanto

    chosen = select_modules(model, ["*"], exclude, prefix="distiller.qat")
    model._slimkit_qat_conv1d = conv1d_to_linear(model, chosen)  # quanto only fake-quantizes nn.Linear
    quanto.quantize(model, weights=getattr(quanto, QTYPES[bits]), include=list(chosen))
    return len(chosen)


def disable_qat(model: torch.nn.Module) -> int:
    """Replace every (unfrozen) quanto QLinear with an ``nn.Linear`` sharing its float weight and bias."""
    from optimum.quanto.nn import QLinear

    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, QLinear):
            linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                     device="meta")
            linear.weight = module.weight
            if module.bias is not None:
                linear.bias = module.bias
            model.set_submodule(name, linear)
            swapped += 1
    for name in getattr(model, "_slimkit_qat_conv1d", []):  # back to the model's own Conv1D layout
        model.set_submodule(name, as_conv1d(model.get_submodule(name)))
    model._slimkit_qat_conv1d = []
    return swapped
