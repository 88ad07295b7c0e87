"""Text for calibration, training and evaluation: the embedded Wikipedia sample or a local corpus."""

from slimkit.data.corpus import Corpus, load_corpus
from slimkit.data.splits import DataSplits, build_splits, corpus_from_config, wikipedia_articles

__all__ = ["Corpus", "DataSplits", "build_splits", "corpus_from_config", "load_corpus", "wikipedia_articles"]
