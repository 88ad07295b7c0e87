"""Measurements that can be checked against known answers."""

from __future__ import annotations

import math

import pytest
import torch

from slimkit.data import build_splits
from slimkit.evaluation import latency, nonzero_parameters, perplexity, pinned_threads
from slimkit.models import tiny_model, tiny_tokenizer
from slimkit.core.errors import ConfigError, DataError


class Uniform(torch.nn.Module):
    """Predicts the uniform distribution: its perplexity is exactly the vocabulary size."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, use_cache=False, **_):
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})()


def test_perplexity_of_uniform_model_is_vocab_size():
    windows = torch.randint(0, 97, (5, 33))
    assert perplexity(Uniform(97), windows, batch_size=2) == pytest.approx(97, rel=1e-5)


def test_nonzero_counts_tied_weights_once():
    model = tiny_model()
    with torch.no_grad():
        model.model.embed_tokens.weight[:10] = 0
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert nonzero_parameters(model) == total - 10 * model.config.hidden_size


def test_pinned_threads_restores():
    before = torch.get_num_threads()
    with pinned_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_latency_reports_every_model():
    models = {"a": tiny_model(0), "b": tiny_model(1)}
    result = latency(models, torch.randint(0, 100, (1, 8)), threads=1, repeats=2, decode_tokens=3)
    assert set(result) == {"a", "b"}
    assert all(r["prefill_ms"] > 0 and r["decode_tokens_per_s"] > 0 and r["threads"] == 1 for r in result.values())


def test_splits_are_disjoint_and_described():
    tok = tiny_tokenizer()
    splits = build_splits(tok, seq_len=32, train_tokens=320, calibration_samples=2, eval_tokens=256)
    assert splits.train.shape == (10, 32) and splits.eval.shape == (8, 32) and splits.calibration.shape == (2, 32)
    start = int(splits.info["eval"]["tokens"].split(",")[0].strip("["))
    assert start >= 320  # the eval slice starts after the training slice ends
    assert splits.info["total_tokens"] - start == 256


@pytest.mark.parametrize("kwargs,match", [
    (dict(calibration_samples=100), "calibration_samples"),
    (dict(train_tokens=10**9), "fewer than the requested windows need"),
    (dict(source="books"), "data.source"),
    (dict(seq_len=0), "data.seq_len"),
])
def test_bad_data_settings(kwargs, match):
    settings = dict(seq_len=32, train_tokens=320, calibration_samples=2, eval_tokens=256) | kwargs
    with pytest.raises((DataError, ConfigError), match=match):
        build_splits(tiny_tokenizer(), **settings)


def test_wikipedia_text_is_real_and_clean():
    from slimkit.data import wikipedia_articles

    articles = wikipedia_articles()
    assert len(articles) > 90
    assert "Anarchism" in articles[0][:200]
    assert sum("[[" in a for a in articles) < len(articles) * 0.05  # wiki links stripped
    assert math.isfinite(sum(len(a) for a in articles))
