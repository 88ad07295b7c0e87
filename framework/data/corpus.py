"""A user's own text: local files or a saved 🤗 dataset, read with the ``datasets`` library.

``data.path`` names a file (``.txt``/``.md``, ``.jsonl``/``.json``, ``.csv``, ``.parquet``), a glob of such
files, or a folder written by ``Dataset.save_to_disk``; ``data.format`` overrides the format the extension
implies. Each record is one *document* (for text files: each paragraph, i.e. blank-line separated block);
``data.field`` names the column that holds its text. With ``data.chat_template=true`` each record is
rendered with the tokenizer's chat template: ``data.field`` is then a column of chat messages
(``[{"role": ..., "content": ...}, ...]``), or, with ``data.response_field`` set, the user turn whose
assistant answer is in ``data.response_field``.

Everything here runs before the model loads, so a wrong path, format or field fails at once.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
from pathlib import Path
from typing import Any

from slimkit.core.errors import ConfigError, DataError

#: data.format values and the ``datasets`` builder each one uses
FORMATS = {"text": "text", "json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet", "saved": None}
#: file extension -> data.format
EXTENSIONS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".csv": "csv",
              ".parquet": "parquet"}
PATH_ALLOWED = ("an existing file (.txt, .md, .jsonl, .json, .csv, .parquet), a glob matching such files, "
                "or a folder written by datasets' save_to_disk")


@dataclasses.dataclass
class Corpus:
    """Documents of a local corpus, not yet tokenized (chat records are rendered with the tokenizer)."""

    path: str
    format: str
    field: str
    records: list[Any]              # str per document, or a message list (chat), in file order
    files: list[dict[str, Any]]     # {"path", "bytes", "sha256"} for every file read
    chat_template: bool = False
    response_field: str | None = None
    split: str | None = None

    @property
    def description(self) -> str:
        kind = "saved 🤗 dataset" if self.format == "saved" else f"{self.format} file{'s' if len(self.files) > 1 else ''}"
        chat = ", chat template applied" if self.chat_template else ""
        return f"local {kind} {self.path} (field {self.field!r}{chat}, {len(self.records)} documents)"

    @property
    def key(self) -> tuple:
        """Identifies the text (file hashes and reading options) for caches."""
        return (tuple(f["sha256"] for f in self.files), self.format, self.field, self.chat_template,
                self.response_field, self.split)

    def documents(self, tokenizer: Any) -> list[str]:
        """The documents' text; chat records go through ``tokenizer.apply_chat_template``."""
        if not self.chat_template:
            return list(self.records)
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("data.chat_template", True, "false for this model",
                              f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'the model')!r} has no chat template")
        return [tokenizer.apply_chat_template(messages, tokenize=False) for messages in self.records]

    def info(self) -> dict[str, Any]:
        """What the report records about the corpus."""
        return {"path": self.path, "format": self.format, "field": self.field, "chat_template": self.chat_template,
                "response_field": self.response_field, "split": self.split, "documents": len(self.records),
                "files": self.files}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_records(paths: list[Path]) -> list[dict[str, Any]]:
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256(p)} for p in paths]


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _resolve_files(path: str, fmt: str | None) -> tuple[list[Path], str]:
    """The files ``data.path`` names and their format (``saved`` for a save_to_disk folder)."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError("data.format", fmt, "one of " + ", ".join(FORMATS) + " (or leave it unset: from the extension)")
    target = Path(path).expanduser()
    if any(c in path for c in "*?["):
        paths = sorted(Path(p) for p in glob.glob(str(target), recursive=True) if Path(p).is_file())
        if not paths:
            raise ConfigError("data.path", path, PATH_ALLOWED, "the glob matches no file")
    elif target.is_dir():
        if fmt not in (None, "saved") or not _is_saved_dataset(target):
            raise ConfigError("data.path", path, PATH_ALLOWED, "this folder was not written by save_to_disk "
                              "(no state.json or dataset_dict.json); for a folder of files use a glob like "
                              f"'{path.rstrip('/')}/*.jsonl'")
        return sorted(p for p in target.rglob("*") if p.is_file()), "saved"
    elif target.is_file():
        paths = [target]
    else:
        raise ConfigError("data.path", path, PATH_ALLOWED, "no such file or folder")
    if fmt == "saved":
        raise ConfigError("data.format", fmt, "text, json, csv or parquet for files", "'saved' is for save_to_disk folders")
    if fmt is None:
        suffixes = {p.suffix.lower() for p in paths}
        unknown = sorted(s for s in suffixes if s not in EXTENSIONS)
        if unknown:
            raise ConfigError("data.format", None, "one of " + ", ".join(f for f in FORMATS if f != "saved"),
                              f"the extension {unknown[0] or '(none)'!r} of data.path={path!r} does not say the format; "
                              "set data.format")
        formats = {EXTENSIONS[s] for s in suffixes}
        if len(formats) > 1:
            raise ConfigError("data.path", path, "files of one format", f"it matches {sorted(formats)}")
        fmt = formats.pop()
    return paths, FORMATS[fmt] or fmt


def _read(path: str, paths: list[Path], fmt: str, split: str | None):
    """The records as a ``datasets.Dataset`` (the library does the parsing)."""
    import datasets

    datasets.disable_progress_bars()
    if fmt == "saved":
        folder = Path(path).expanduser()
        try:
            loaded = datasets.load_from_disk(str(folder))
        except Exception as exc:  # corrupt arrow files, incompatible versions, ...
            raise DataError(f"data.path={path!r}: datasets.load_from_disk could not read it: {exc}") from exc
        if isinstance(loaded, datasets.DatasetDict):
            names = list(loaded)
            chosen = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
            if chosen not in loaded:
                raise ConfigError("data.split", split, "one of the saved splits: " + ", ".join(names))
            return loaded[chosen], chosen
        if split is not None:
            raise ConfigError("data.split", split, "null for a saved Dataset (it has no splits)")
        return loaded, None
    if split is not None:
        raise ConfigError("data.split", split, "null for files (only save_to_disk folders of a DatasetDict have splits)")
    kwargs = {"sample_by": "paragraph"} if fmt == "text" else {}
    try:
        return datasets.load_dataset(fmt, data_files=[str(p) for p in paths], split="train", **kwargs), None
    except Exception as exc:  # datasets wraps parser errors (DatasetGenerationError, ArrowInvalid, ...)
        cause = exc.__cause__ or exc
        raise DataError(f"data.path={path!r} cannot be read as data.format={fmt!r} "
                        f"(allowed: text, json, csv, parquet, saved): {type(cause).__name__}: {cause}") from exc


def _column(dataset, field: str, path: str) -> list[Any]:
    if field not in dataset.column_names:
        raise ConfigError("data.field", field, "a column of the data: " + ", ".join(map(repr, dataset.column_names)),
                          f"{path} has no column {field!r}")
    return dataset[field]


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def load_corpus(path: str, format: str | None = None, field: str = "text", split: str | None = None,
                chat_template: bool = False, response_field: str | None = None) -> Corpus:
    """Read ``data.path`` with 🤗 datasets and check it holds usable text (before any model loads)."""
    paths, fmt = _resolve_files(path, format)
    if fmt == "text" and field != "text":
        raise ConfigError("data.field", field, "'text' for plain-text files (each paragraph is a document)")
    if response_field is not None and not chat_template:
        raise ConfigError("data.response_field", response_field, "null unless data.chat_template=true",
                          "a prompt/response pair becomes a user and an assistant turn of the chat template")
    if fmt != "saved" and all(p.stat().st_size == 0 for p in paths):
        raise DataError(f"data.path={path!r} is an empty corpus: {len(paths)} file(s) of 0 bytes")
    dataset, chosen_split = _read(path, paths, fmt, split)
    if dataset.num_rows == 0:
        raise DataError(f"data.path={path!r} is an empty corpus: it holds no records")
    values = _column(dataset, field, path)
    if chat_template and response_field is not None:
        responses = _column(dataset, response_field, path)
        records = [[{"role": "user", "content": str(p)}, {"role": "assistant", "content": str(r)}]
                   for p, r in zip(values, responses) if p is not None and r is not None]
    elif chat_template:
        bad = next((v for v in values if not _is_messages(v)), None)
        if bad is not None:
            raise ConfigError("data.field", field, "a column of chat messages [{role, content}, ...] when "
                              "data.chat_template=true (or set data.response_field for prompt/response columns)",
                              f"found {type(bad).__name__} {str(bad)[:60]!r}")
        records = [v for v in values if v]
    else:
        bad = next((v for v in values if v is not None and not isinstance(v, str)), None)
        if bad is not None:
            raise ConfigError("data.field", field, "a column of strings",
                              f"found {type(bad).__name__} {str(bad)[:60]!r}; for chat messages set data.chat_template=true")
        records = [v for v in values if v and v.strip()]
        if fmt == "text":  # a paragraph keeps the file's trailing newline
            records = [v.strip("\n") for v in records]
    if not records:
        raise DataError(f"data.path={path!r} is an empty corpus: the {dataset.num_rows} records of "
                        f"data.field={field!r} hold no text")
    return Corpus(path=path, format=fmt, field=field, records=records, files=_file_records(paths),
                  chat_template=chat_template, response_field=response_field, split=chosen_split)
