"""Quantization-aware training with optimum-quanto's own quantizer.

Before ``freeze``, quanto's ``QLinear`` re-quantizes its float weight on every forward pass with a
straight-through estimator, so gradients reach the float weights: exactly the weight quantization
(int4 affine, groups of up to 128; int8 symmetric per channel) that a later ``quantizer=quanto``
stage applies for real. After training the modules are turned back into plain ``nn.Linear``
holding the trained float weights.
"""

from __future__ import annotations

from typing import Sequence

import torch

from slimkit.toolkit.modules import select_modules

QTYPES = {8: "qint8", 4: "qint4", 2: "qint2"}


def enable_qat(model: torch.nn.Module, bits: int, exclude: Sequence[str]) -> int:
    """Swap the selected Linear layers for quanto QLinear (fake-quantized weights); return how many."""
    from optimum import quanto

    chosen = select_modules(model, ["*"], exclude, prefix="distiller.qat")
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
    return swapped
