"""Running a GGUF export: llama.cpp (through llama-cpp-python) when it is installed, else transformers.

- :class:`LlamaCppSession` is the real runtime: llama.cpp's own kernels on the quantized blocks.
- :class:`TransformersGGUFSession` is the fallback: transformers' GGUF loader dequantizes every tensor
  to fp32 and runs the model in PyTorch. Its quality numbers are those of the file's weights (exact up
  to float rounding of the dequantization), but its speed is PyTorch's, not llama.cpp's; the report's
  ``runtime`` field says which one ran.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import numpy as np
import torch
from slimkit.core.errors import DataError

LLAMA_CPP_HINT = ("apt-get install -y build-essential cmake && pip install llama-cpp-python "
                  "(builds llama.cpp from source, ~15 min on 2 cores)")


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # ImportError, or a broken shared library
        return False
    return True


class LlamaCppSession:
    """A GGUF file in llama.cpp, pinned to ``threads``; every call starts from an empty KV cache."""

    runtime = "llama.cpp"

    def __init__(self, path: Path, threads: int = 1, context: int = 1024):
        import llama_cpp

        self.runtime_version = f"llama-cpp-python {llama_cpp.__version__}"
        self.path, self.threads = path, threads
        self._open(context)

    def _open(self, context: int) -> None:
        import llama_cpp

        # logits for every position (perplexity needs them) cost context x vocab floats, so the context
        # starts small and grows when a longer sequence arrives
        self.context = context
        self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=context, n_batch=context, n_ubatch=context,
                                   n_threads=self.threads, n_threads_batch=self.threads, logits_all=True, verbose=False)

    def _eval(self, tokens: list[int]) -> None:
        if len(tokens) > self.context:
            limit = int(next((v for k, v in self.llm.metadata.items() if k.endswith(".context_length")), 0))
            if len(tokens) > limit:
                raise DataError(f"a sequence of {len(tokens)} tokens exceeds the model's context of {limit}")
            del self.llm
            self._open(min(limit, 1 << (len(tokens) - 1).bit_length()))
        self.llm.reset()
        self.llm.eval(tokens)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in input_ids.tolist():
            self._eval(row)
            rows.append(torch.from_numpy(np.array(self.llm.scores[: len(row)], dtype=np.float32)))
        return torch.stack(rows)

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
        prompt = input_ids[0].tolist()
        self._eval(prompt)
        out: list[int] = []
        for i in range(new_tokens):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            if i + 1 < new_tokens:
                self.llm.eval([token])
        return out


class TransformersGGUFSession:
    """A GGUF file read back by transformers' GGUF loader (dequantized to fp32) and run in PyTorch."""

    runtime = "transformers-gguf"

    def __init__(self, path: Path, threads: int = 1):
        from transformers import AutoModelForCausalLM

        import slimkit.deploy.serving as serving

        self.runtime_version = f"transformers {md.version('transformers')} (GGUF dequantized to fp32; speed is PyTorch's)"
        self.threads = threads
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        self._torch = serving.TorchSession(model)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._torch.logits(input_ids)

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
        return self._torch.generate(input_ids, new_tokens)
