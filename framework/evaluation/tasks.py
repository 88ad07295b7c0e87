"""Task accuracy through lm-evaluation-harness, offline.

``eval.tasks`` entries are slimkit's built-in tasks, paths of lm-eval task YAML files, or lm-eval task
names; every one is loaded (and its data read) before the model loads, with the Hugging Face Hub switched
off, so a task whose hub dataset is not cached fails at once with a :class:`DataError` naming it.

Built-in tasks (their YAML in ``slimkit/evaluation/lm_eval_tasks/``, their data written into
``$SLIMKIT_CACHE/tasks/`` at first use):

- ``sentiment``: 2-shot sentiment of Rotten Tomatoes review sentences. Data: the 10,605 movie-review
  snippets with mean human sentiment (−4..4) from Hutto & Gilbert (ICWSM 2014), shipped in the
  ``vaderSentiment==3.3.2`` sdist (MIT); the set-up step downloads the sdist from PyPI into the cache.
  Sentences with |score| ≥ 1 are labelled positive/negative; demonstrations come from the first 1,000
  snippets and the evaluated sentences (balanced) from the rest, so they never overlap.
  :func:`sentiment_accuracy` is the same measurement without lm-eval (the benchmarks' reference).
- ``cloze``: LAMBADA-style last-word prediction on passages cut from the run's evaluation token range
  (held-out text, never the calibration/training windows).
- ``analogy``: word analogies ("Athens is to Greece as Baghdad is to" → Iraq) from the Google analogy test set
  (Mikolov et al. 2013) shipped in gensim's test data, 4 choices each (the answer and 3 other answers of the same
  section), the 14 sections interleaved so every prefix covers all of them. World knowledge (capitals, currencies,
  US states) and morphology (plurals, tenses, comparatives): a task a small base model is above chance on when it
  is at chance on 2-shot sentiment (Gemma-3-270M).

A user task is an lm-eval YAML; relative paths in its ``dataset_kwargs.data_files`` are resolved
against the YAML's folder (see README, "Your own model, data and task").
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import io
import itertools
import json
import logging
import random
import re
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from slimkit.core.errors import ConfigError, DataError

SDIST = "vaderSentiment-3.3.2.tar.gz"
FETCH_HINT = "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d \"$SLIMKIT_CACHE/sdist\""
log = logging.getLogger("slimkit")

LABELS = ("negative", "positive")
DEMO_POOL = 1000


@functools.lru_cache(maxsize=1)
def review_snippets() -> list[tuple[float, str]]:
    """(mean sentiment, sentence) pairs from the vaderSentiment sdist in the cache."""
    from slimkit.core.paths import cache_dir

    path = cache_dir() / "sdist" / SDIST
    if not path.is_file():
        raise DataError(f"the sentiment task needs {path}; the set-up step fetches it with: {FETCH_HINT}")
    with tarfile.open(path) as outer:
        inner_bytes = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        text = inner.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read().decode("utf-8")
    rows = []
    for line in text.splitlines():
        parts = line.strip().split("\t")
        if len(parts) == 3:
            rows.append((float(parts[1]), parts[2].strip()))
    return rows


def labelled_snippets() -> list[tuple[str, int]]:
    """(sentence, label) of the snippets with a clear sentiment (mean score at least 1 away from 0) and under 300
    characters, in file order: the first ``DEMO_POOL`` are the demonstration pool, every test row comes from the rest."""
    return [(s, int(score > 0)) for score, s in review_snippets() if abs(score) >= 1.0 and len(s) < 300]


def sentiment_examples(samples: int = 200, shots: int = 2, seed: int = 0) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(demonstrations, balanced evaluation examples) as (sentence, label) pairs, disjoint."""
    rows = labelled_snippets()
    pool, rest = rows[:DEMO_POOL], rows[DEMO_POOL:]
    rng = random.Random(seed)
    demos = [rng.choice([r for r in pool if r[1] == label]) for label in (1, 0)][:shots] if shots <= 2 else \
        rng.sample(pool, shots)
    by_label = {label: [r for r in rest if r[1] == label] for label in (0, 1)}
    if samples // 2 > min(len(v) for v in by_label.values()):
        raise DataError(f"eval.task_samples={samples} is more than the balanced set holds")
    chosen = rng.sample(by_label[0], samples // 2) + rng.sample(by_label[1], samples - samples // 2)
    rng.shuffle(chosen)
    return demos, chosen


def _prompt(demos: list[tuple[str, int]], sentence: str) -> str:
    parts = [f"Review: {s}\nSentiment: {LABELS[y]}\n" for s, y in demos]
    return "\n".join(parts + [f"Review: {sentence}\nSentiment:"])


def sentiment_accuracy(model: torch.nn.Module, tokenizer, samples: int = 200, shots: int = 2, seed: int = 0,
                       batch_size: int = 8, desc: str = "sentiment") -> float:
    """Few-shot accuracy: the label whose first token (" negative"/" positive") scores higher wins."""
    demos, examples = sentiment_examples(samples, shots, seed)
    label_ids = [tokenizer(" " + label, add_special_tokens=False)["input_ids"][0] for label in LABELS]
    if label_ids[0] == label_ids[1]:
        raise DataError("the tokenizer gives ' negative' and ' positive' the same first token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    correct = 0
    model.eval()
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, leave=False, unit="batch"):
        batch = examples[start:start + batch_size]
        encoded = [tokenizer(_prompt(demos, s), add_special_tokens=False)["input_ids"] for s, _ in batch]
        length = max(map(len, encoded))
        ids = torch.full((len(batch), length), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(encoded):  # right padding: the last real token predicts the label
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        last = logits[torch.arange(len(batch)), mask.sum(1) - 1][:, label_ids]
        predictions = last.argmax(-1).tolist()
        correct += sum(int(p == y) for p, (_, y) in zip(predictions, batch))
    return correct / len(examples)


# --- built-in tasks as lm-eval YAML + local jsonl ---------------------------------------------------

#: slimkit's own tasks; every other eval.tasks entry is an lm-eval YAML path or task name
BUILTIN = ("sentiment", "cloze", "analogy")
#: ``datasets`` builders that read local files (a task using another dataset_path needs the Hub)
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}
TASKS_ALLOWED = ("slimkit's built-in tasks (sentiment, cloze, analogy), the path of an lm-eval task YAML file, or an "
                 "lm-eval task name whose data is available offline")


def _template(name: str) -> str:
    return (importlib.resources.files("slimkit.evaluation") / "lm_eval_tasks" / f"{name}.yaml").read_text()


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _materialize(folder: Path, name: str, make_files: Callable[[], dict[str, list[dict[str, Any]]]]) -> Path:
    """A task folder (YAML + the jsonl files ``make_files()`` returns) written atomically into the cache once; its
    YAML path. ``make_files`` runs only when the folder is not there yet."""
    from filelock import FileLock

    from slimkit.core.artifact import atomic_directory

    yaml = folder / f"{name}.yaml"
    if yaml.is_file():
        return yaml
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):  # parallel sweep jobs: one writes, the others wait and read
        if not yaml.is_file():
            files = make_files()
            with atomic_directory(folder, overwrite=True) as tmp:
                for filename, rows in files.items():
                    _write_jsonl(tmp / filename, rows)
                (tmp / f"{name}.yaml").write_text(_template(name))
    return yaml


def sentiment_rows(seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(test rows, demonstration rows) of the sentiment task: the built-in scorer's 200 sentences first,
    then the rest of the balanced pool alternating negative/positive (every longer prefix stays balanced)."""
    demos, first = sentiment_examples(200, 2, seed)
    used = {s for s, _ in first}
    rows = labelled_snippets()
    rest = {label: [r for r in rows[DEMO_POOL:] if r[1] == label and r[0] not in used] for label in (0, 1)}
    rng = random.Random(seed + 1)
    for group in rest.values():
        rng.shuffle(group)
    tail = [r for pair in zip(rest[0], rest[1]) for r in pair]
    as_rows = lambda pairs: [{"sentence": s, "label": y} for s, y in pairs]  # noqa: E731
    return as_rows(first + tail), as_rows(demos)


def sentiment_task_yaml() -> Path:
    """The sentiment task's YAML in the cache (written with its data at first use)."""
    from slimkit.core.paths import cache_dir

    def files() -> dict[str, list[dict[str, Any]]]:
        test, demos = sentiment_rows()
        return {"test.jsonl": test, "demos.jsonl": demos}

    return _materialize(cache_dir() / "tasks" / "sentiment", "sentiment", files)


ANALOGY_FILE = "test/test_data/questions-words.txt"
#: analogies per section in the task's test set (14 sections: 2,100 rows, 150 of every kind)
ANALOGIES_PER_SECTION = 150


def analogy_sections() -> dict[str, list[tuple[str, str, str, str]]]:
    """The Google analogy test set from gensim's test data: ``{section: [(a, b, c, d), ...]}`` (a : b :: c : d)."""
    text = (importlib.resources.files("gensim") / ANALOGY_FILE).read_text()
    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(":"):
            current = line[1:].strip()
            sections[current] = []
        elif line.strip() and current is not None:
            words = line.split()
            if len(words) == 4:
                sections[current].append(tuple(words))
    return sections


def analogy_rows(per_section: int = ANALOGIES_PER_SECTION, choices: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Test rows of the analogy task: per section ``per_section`` analogies drawn at random, each with the answer and
    ``choices - 1`` other answers of its section (none of the three prompt words) in random order; sections
    interleaved round-robin, so the first ``k * 14`` rows hold ``k`` of every section."""
    rng = random.Random(seed)
    drawn = []
    for name, items in analogy_sections().items():
        answers = sorted({d for *_, d in items})
        rows = []
        for a, b, c, d in rng.sample(items, min(per_section, len(items))):
            others = rng.sample([w for w in answers if w not in (a, b, c, d)], choices - 1)
            options = others + [d]
            rng.shuffle(options)
            rows.append({"section": name, "a": a, "b": b, "c": c, "choices": options, "label": options.index(d)})
        drawn.append(rows)
    return [row for group in itertools.zip_longest(*drawn) for row in group if row is not None]


def analogy_task_yaml() -> Path:
    """The analogy task's YAML in the cache (written with its data at first use)."""
    from slimkit.core.paths import cache_dir

    return _materialize(cache_dir() / "tasks" / "analogy", "analogy", lambda: {"test.jsonl": analogy_rows()})


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
_LAST_WORD = re.compile(r"^(?P<context>.*\S) (?P<target>[A-Za-z][A-Za-z'\-]*[A-Za-z]{2})[\"')\]]*[.!?][\"')\]]*$", re.S)


def cloze_passages(text: str, min_words: int = 30, max_words: int = 150) -> list[dict[str, str]]:
    """LAMBADA-style items from running text: runs of whole sentences (line breaks kept) of at least
    ``min_words`` words that end in a sentence whose last word (letters only, ≥ 3, after a space) is the
    target, the context everything before it. Passages never overlap; a run that grows past ``max_words`` without a
    usable ending is dropped."""
    passages, start = [], 0
    for end in (m.end() for m in _SENTENCE_END.finditer(text)):
        segment = text[start:end].strip()
        words = len(segment.split())
        if words < min_words:
            continue
        match = _LAST_WORD.match(segment)
        if match:
            passages.append({"context": match["context"], "target": match["target"]})
        if match or words > max_words:
            start = end
    return passages


def cloze_task_yaml(data: Any, tokenizer: Any, min_words: int = 30) -> Path:
    """The cloze task's YAML in the cache, its passages cut from ``data.eval`` (the evaluation windows)."""
    from slimkit.core.paths import cache_dir

    text = tokenizer.decode(data.eval.flatten().tolist(), skip_special_tokens=False)
    documents = text.split(tokenizer.eos_token) if tokenizer.eos_token else [text]
    # the evaluation range starts mid-document: drop everything before its first sentence end
    documents[0] = documents[0].split(". ", 1)[1] if ". " in documents[0] else ""
    passages = [p for doc in documents for p in cloze_passages(doc, min_words)]
    if not passages:
        raise DataError(f"eval.tasks contains 'cloze' but the evaluation text ({data.eval.numel()} tokens) holds no "
                        f"passage of {min_words}+ words ending in a sentence; raise data.eval_tokens")
    digest = hashlib.sha256(json.dumps(passages).encode()).hexdigest()[:12]
    return _materialize(cache_dir() / "tasks" / f"cloze-{digest}", "cloze", lambda: {"test.jsonl": passages})


# --- user YAML files ----------------------------------------------------------------------------------

def _resolve_relative(value: Any, base: Path) -> Any:
    if isinstance(value, str):
        candidate = base / value
        return str(candidate) if not Path(value).is_absolute() and (candidate.exists() or "*" in value) else value
    if isinstance(value, list):
        return [_resolve_relative(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_relative(v, base) for k, v in value.items()}
    return value


def task_yaml_config(path: str | Path) -> dict[str, Any]:
    """An lm-eval task YAML as a config dict (``include``/``!function`` resolved by lm-eval), with relative
    ``dataset_kwargs.data_files`` (and a relative local ``dataset_path``) resolved against its folder."""
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(path).expanduser().resolve()
    try:
        config = load_yaml(path, resolve_func=True, recursive=True)
    except Exception as exc:
        raise ConfigError("eval.tasks", str(path), "a readable lm-eval task YAML file", f"{type(exc).__name__}: {exc}") from exc
    kwargs = config.get("dataset_kwargs") or {}
    if "data_files" in kwargs:
        config["dataset_kwargs"] = {**kwargs, "data_files": _resolve_relative(kwargs["data_files"], path.parent)}
    dataset_path = config.get("dataset_path")
    if isinstance(dataset_path, str) and dataset_path not in LOCAL_BUILDERS and (path.parent / dataset_path).exists():
        config["dataset_path"] = str(path.parent / dataset_path)
    return config


# --- the task set of a run ------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _lm_eval_index():
    """lm-eval's TaskManager over its built-in task YAMLs (indexed once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _is_yaml(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml"))


def _leaves(task_dict: dict) -> dict[str, Any]:
    leaves = {}
    for key, value in task_dict.items():
        if isinstance(value, dict):
            leaves.update(_leaves(value))
        else:
            leaves[getattr(value, "task_name", None) or str(key)] = value
    return leaves


def _network_error(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, ConnectionError) or "offline" in type(exc).__name__.lower() or \
                "Couldn't reach" in str(exc) or "HF_HUB_OFFLINE" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@dataclasses.dataclass
class TaskInfo:
    """What the report says about one task besides its scores."""

    name: str
    spec: str          # the eval.tasks entry it came from
    source: str        # built-in, a YAML path, or "lm-eval"
    metric: str        # the primary metric (the first of the task's metric_list)
    higher_is_better: bool
    samples: int | None = None  # examples scored (after eval.task_samples)


class TaskSet:
    """The tasks of ``eval.tasks``, loaded through lm-eval before the model loads.

    ``cloze`` depends on the run's evaluation text and is built by :meth:`bind` once the data is split.
    """

    def __init__(self, specs: Iterable[str]):
        from slimkit.evaluation.harness import offline

        self.specs = [str(s) for s in specs]
        if not self.specs:
            self.task_dict, self.infos, self._manager = {}, {}, None
            return
        self.task_dict: dict[Any, Any] = {}
        self.infos: dict[str, TaskInfo] = {}
        self._manager = None
        if len(set(self.specs)) != len(self.specs):
            raise ConfigError("eval.tasks", self.specs, "each task at most once")
        with offline():
            for spec in self.specs:
                if spec == "cloze":
                    continue
                if spec == "sentiment":
                    self._add(spec, task_yaml_config(sentiment_task_yaml()), "built-in")
                elif spec == "analogy":
                    self._add(spec, task_yaml_config(analogy_task_yaml()), "built-in")
                elif _is_yaml(spec):
                    if not Path(spec).expanduser().is_file():
                        raise ConfigError("eval.tasks", spec, TASKS_ALLOWED, "no such YAML file")
                    self._add(spec, task_yaml_config(spec), str(Path(spec).expanduser().resolve()))
                else:
                    self._add(spec, self._registered(spec), "lm-eval")

    @property
    def needs_data(self) -> bool:
        return "cloze" in self.specs and "cloze" not in self.infos

    def bind(self, data: Any, tokenizer: Any) -> None:
        """Build the tasks made from the run's held-out text (``cloze``)."""
        from slimkit.evaluation.harness import offline

        if self.needs_data:
            with offline():
                self._add("cloze", task_yaml_config(cloze_task_yaml(data, tokenizer)), "built-in")

    def _registered(self, name: str) -> str:
        if self._manager is None:  # indexing lm-eval's ~15k task YAMLs takes a while: only when needed
            self._manager = _lm_eval_index()
        if name not in self._manager.all_tasks:
            import difflib

            close = difflib.get_close_matches(name, self._manager.all_tasks, n=3)
            raise ConfigError("eval.tasks", name, TASKS_ALLOWED, f"no such task; did you mean {close}?" if close else
                              "no such task (`lm-eval ls tasks` lists them)")
        return name

    def _add(self, spec: str, config: dict[str, Any] | str, source: str) -> None:
        from lm_eval.tasks import TaskManager, get_task_dict

        manager = self._manager if isinstance(config, str) else TaskManager(include_defaults=False)
        name = config.get("task", spec) if isinstance(config, dict) else config
        try:
            loaded = get_task_dict([config], manager)
        except Exception as exc:
            raise self._load_error(str(name), config, exc) from exc
        for task_name, task in _leaves(loaded).items():
            if task_name in self.infos:
                raise ConfigError("eval.tasks", self.specs, "tasks with distinct names", f"{task_name!r} appears twice")
            metrics = list(task.aggregation())
            better = task.higher_is_better()
            self.infos[task_name] = TaskInfo(task_name, spec, source, metrics[0], bool(better.get(metrics[0], True)))
        self.task_dict.update(loaded)

    def _load_error(self, name: str, config: dict[str, Any] | str, exc: BaseException) -> DataError:
        dataset = config.get("dataset_path") if isinstance(config, dict) else None
        if dataset is None and self._manager is not None and isinstance(config, str):
            entry = self._manager.task_index.get(config)
            if entry is not None and entry.yaml_path:
                try:
                    dataset = task_yaml_config(entry.yaml_path).get("dataset_path")
                except ConfigError:
                    dataset = None
        if _network_error(exc) or (dataset and dataset not in LOCAL_BUILDERS and not Path(str(dataset)).exists()):
            where = f"the Hugging Face Hub dataset {dataset!r}" if dataset else "a dataset from the Hugging Face Hub"
            return DataError(
                f"eval.tasks: the task {name!r} needs {where}, which is not in the local cache, and slimkit loads tasks "
                f"offline (HF_DATASETS_OFFLINE=1). Provide the data locally: write the examples to a jsonl file and point "
                f"a task YAML at it (dataset_path: json, dataset_kwargs: {{data_files: {{test: my.jsonl}}}}; see the README "
                f"section 'Your own model, data and task') and pass eval.tasks=[my_task.yaml]; or download the dataset "
                f"on a machine with network (datasets.load_dataset({dataset or '...'!r})) and copy its "
                f"~/.cache/huggingface/datasets folder here. Cause: {type(exc).__name__}: {exc}")
        return DataError(f"eval.tasks: the task {name!r} could not be loaded: {type(exc).__name__}: {exc}")

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, limit: int | None = None, batch_size: int = 4,
                 label: str = "") -> dict[str, dict[str, float]]:
        """Every task's metrics (``{task: {metric: value}}``) for ``model`` as it is in memory."""
        if not self.task_dict:
            return {}
        if self.needs_data:
            raise DataError("eval.tasks contains 'cloze': call TaskSet.bind(data, tokenizer) before evaluating")
        from lm_eval.evaluator import evaluate

        from slimkit.evaluation.harness import lm_eval_model, offline

        log.info("lm-eval tasks %s [%s]", ", ".join(self.infos), label)
        lm = lm_eval_model(model, tokenizer, batch_size=batch_size)
        with offline():
            results = evaluate(lm, self.task_dict, limit=limit, verbosity="ERROR")
        scores = {}
        for name, info in self.infos.items():
            raw = results["results"][name]
            scores[name] = {key.split(",")[0]: float(v) for key, v in raw.items()
                            if "," in key and "_stderr" not in key and isinstance(v, (int, float))}
            info.samples = int(results.get("n-samples", {}).get(name, {}).get("effective", 0)) or None
        return scores

    def info(self) -> dict[str, dict[str, Any]]:
        """Per task: where it came from and which metric is its score."""
        return {name: dataclasses.asdict(i) for name, i in self.infos.items()}


def task_records(infos: dict[str, dict[str, Any]], baseline: dict[str, dict[str, float]],
                 final: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """``report.json``'s ``tasks``: per task its metric, baseline, final and the fraction retained
    (final/baseline, or baseline/final for a lower-is-better metric)."""
    records = {}
    for name, info in infos.items():
        metric = info["metric"]
        base = (baseline.get(name) or {}).get(metric)
        last = (final.get(name) or {}).get(metric)
        retained = None
        if base is not None and last is not None:
            num, den = (last, base) if info["higher_is_better"] else (base, last)
            retained = num / den if den else None
        records[name] = {**info, "baseline": base, "final": last, "retained": retained,
                         "baseline_metrics": baseline.get(name), "final_metrics": final.get(name)}
    return records
