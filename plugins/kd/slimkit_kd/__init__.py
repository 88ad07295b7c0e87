"""Knowledge distillation as a slimkit distiller, trained with ``accelerate``.

The teacher is the pipeline's original model (``state.reference``) or a local Hugging Face folder
(``teacher_path``, same tokenizer required). The student is the pipeline's current model (e.g. after
pruning) or a copy with decoder layers dropped (``student_layers``, DistilBERT-style). Optional
quantization-aware training (``qat_bits``) fake-quantizes the student's weights during distillation so
the quantizer stage that follows loses less: on that quantizer's own grid when it offers one
(``Stage.simulate``, e.g. ``quantizer=autoround``: its group size, symmetry and embedding table), otherwise
with optimum-quanto's quantizer (``qat_grid``).

Sample config (``conf`` group ``distiller``)::

    distiller: kd
    distiller.student_layers: every_other   # or [0, 2, 4, ...]; null keeps the current model's depth
    distiller.temperature: 2.0
    distiller.alpha: 0.5                    # weight of the KL term; 1 - alpha weights hard-label CE
    distiller.hidden_weight: 0.0            # > 0 adds normalised hidden-state MSE (layer_map pairs)
    distiller.max_steps: 200
    distiller.lr: 1e-4
    distiller.eval_every: 25                # validation windows carved from the end of data.train
    distiller.patience: 3                   # early stop after 3 evaluations without improvement
    distiller.checkpoint_every: 50          # <run dir>/checkpoints/step-<n>/ (safetensors + json)
    distiller.resume: true                  # continue from the latest checkpoint
    distiller.qat_bits: 4                   # quantization-aware distillation for quantizer.bits=4
    distiller.qat_grid: auto                # auto | quantizer (the following quantizer's own grid) | quanto

Data parallel: ``accelerate launch --num_processes N -m slimkit distiller=kd ...`` (``--cpu`` for N CPU processes
over gloo, ``model.device=cuda`` for GPUs): every process holds the student and the teacher on its own device and
trains on its share of each global batch (``batch_size`` windows in all); only the main process evaluates and writes
the artifact and the report. The metrics record ``processes``.
If an unstructured pruner ran before (``state.zero_masks``), exact zeros of 2-D weights are masks and stay zero.
When a ``kd`` distiller is configured, pruning schedules call :meth:`KDDistiller.recover` between
their steps, so recovery distils from the original model instead of plain fine-tuning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, List, Mapping, Optional

import torch

from slimkit import ConfigError, DistillerConfig, Kind, MissingDependencyError, PluginError, Stage, check_choice, check_range
from slimkit.toolkit.training import LoopSettings, fingerprint_model, train_loop

from .loss import LayerOutputs, hidden_mse, kd_logit_loss
from .student import decoder_layers, drop_layers, resolve_layers

__all__ = ["KDConfig", "KDDistiller", "drop_layers", "hidden_mse", "kd_logit_loss"]

log = logging.getLogger("slimkit")

STUDENT_FROM = ("model", "teacher")
QAT_BITS = (None, 2, 4, 8)
QAT_GRIDS = ("auto", "quantizer", "quanto")
#: config fields that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = {"max_steps", "resume", "checkpoint_every", "checkpoint_dir", "keep_checkpoints", "patience",
                     "eval_every"}


@dataclasses.dataclass
class KDConfig(DistillerConfig):
    """Knowledge-distillation settings on top of :class:`DistillerConfig` (temperature, alpha, max_steps, lr,
    batch_size)."""

    #: a local Hugging Face folder holding the teacher; null: the pipeline's original model
    teacher_path: Optional[str] = None
    #: null (keep the student's depth), 'every_other', or a list of decoder-layer indices to keep
    student_layers: Any = None
    #: where a dropped-layer student is cut from: 'model' (the pipeline's current model) or 'teacher'
    student_from: str = "model"
    #: weight of the normalised hidden-state MSE (0: off)
    hidden_weight: float = 0.0
    #: [[student_layer, teacher_layer], ...] for the hidden MSE; null: the kept layers (or identity)
    layer_map: Any = None
    weight_decay: float = 0.0
    warmup_steps: int = 0
    #: clip the gradient norm (0: off)
    grad_clip: float = 1.0
    #: null: the pipeline's seed
    seed: Optional[int] = None
    #: fraction of data.train windows (from its end) held out for validation
    val_fraction: float = 0.1
    #: evaluate on the validation windows every N steps (0: never)
    eval_every: int = 25
    #: stop after this many evaluations without improvement (0: never stop early)
    patience: int = 0
    #: write a checkpoint every N steps (0: never)
    checkpoint_every: int = 0
    #: checkpoint folder; null: <run dir>/checkpoints
    checkpoint_dir: Optional[str] = None
    keep_checkpoints: int = 2
    #: continue from the latest checkpoint in checkpoint_dir
    resume: bool = False
    #: quantization-aware training: simulate quanto int<qat_bits> weights during distillation (null: off)
    qat_bits: Optional[int] = None
    #: whose rounding QAT simulates: 'quantizer' (the run's quantizer's own grid and module selection, which it
    #: must offer), 'quanto' (optimum-quanto's int grid on every Linear but qat_exclude), 'auto' (the quantizer's
    #: own when it offers one, else quanto's)
    qat_grid: str = "auto"
    #: grid 'quanto' only: glob patterns of Linear modules kept in float during QAT (match quantizer.exclude)
    qat_exclude: List[str] = dataclasses.field(default_factory=lambda: ["lm_head"])
    #: train on the CPU (true) or on the accelerator (false); null: where the model is (model.device)
    cpu: Optional[bool] = None
    #: learning rate of the recovery steps pruners call (:meth:`KDDistiller.recover`, float, no QAT); null: lr
    recovery_lr: Optional[float] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.recovery_lr is not None:
            check_range("distiller.recovery_lr", self.recovery_lr, 0.0, low_open=True)
        check_range("distiller.hidden_weight", self.hidden_weight, 0.0)
        check_range("distiller.weight_decay", self.weight_decay, 0.0)
        check_range("distiller.warmup_steps", self.warmup_steps, 0)
        check_range("distiller.grad_clip", self.grad_clip, 0.0)
        check_range("distiller.val_fraction", self.val_fraction, 0.0, 1.0, high_open=True)
        check_range("distiller.eval_every", self.eval_every, 0)
        check_range("distiller.patience", self.patience, 0)
        check_range("distiller.checkpoint_every", self.checkpoint_every, 0)
        check_range("distiller.keep_checkpoints", self.keep_checkpoints, 1)
        check_choice("distiller.student_from", self.student_from, STUDENT_FROM)
        check_choice("distiller.qat_bits", self.qat_bits, QAT_BITS)
        check_choice("distiller.qat_grid", self.qat_grid, QAT_GRIDS)
        if self.student_layers is not None and self.student_layers != "every_other":
            spec = self.student_layers
            ok = isinstance(spec, (list, tuple)) and len(spec) > 0 and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in spec)
            if not ok or list(spec) != sorted(set(spec)):
                raise ConfigError("distiller.student_layers", spec, "null, 'every_other', or a non-empty increasing "
                                  "list of distinct layer indices >= 0, e.g. [0, 2, 4]")
            self.student_layers = list(spec)
        if self.layer_map is not None:
            pairs = self.layer_map
            ok = isinstance(pairs, (list, tuple)) and len(pairs) > 0 and all(
                isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(i, int) and i >= 0 for i in p)
                for p in pairs)
            if not ok:
                raise ConfigError("distiller.layer_map", pairs, "null or a non-empty list of [student_layer, "
                                  "teacher_layer] index pairs, e.g. [[0, 1], [1, 3]]")
            self.layer_map = [list(p) for p in pairs]
        if self.seed is not None:
            check_range("distiller.seed", self.seed, 0)
        if self.patience and not (self.eval_every and self.val_fraction > 0):
            raise ConfigError("distiller.patience", self.patience, "0 unless validation runs (distiller.eval_every > 0 "
                              "and distiller.val_fraction > 0)", "early stopping watches the validation loss")


def _parametrized(model: torch.nn.Module):
    """Modules whose weight a parametrization (a quantizer's grid simulation) computes."""
    from torch.nn.utils import parametrize

    return (m for m in model.modules() if parametrize.is_parametrized(m, "weight"))


def _hash_weights(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class KDDistiller(Stage):
    """Distil the teacher into the student (see the module docstring for a sample config)."""

    kind = Kind.DISTILLER
    name = "kd"
    Config = KDConfig
    requires = {"accelerate": "pip install accelerate", "safetensors": "pip install safetensors"}
    #: float16 is refused: its training on the CPU overflowed to NaN losses within two steps (tiny model)
    supports = {"dtypes": frozenset({"float32", "bfloat16"}), "devices": frozenset({"cpu", "cuda"})}

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        """The original model is the teacher unless ``teacher_path`` names another one."""
        return self.config.teacher_path is None

    def __init__(self, config: KDConfig | None = None):
        super().__init__(config)
        self._teacher_cache: torch.nn.Module | None = None

    # --- checks before the model loads ----------------------------------------------------------
    def check_before_load(self, settings: Mapping[str, Any]) -> None:
        cfg = self.config
        if cfg.teacher_path is not None:
            folder = Path(cfg.teacher_path).expanduser()
            if not (folder / "config.json").is_file():
                raise ConfigError("distiller.teacher_path", cfg.teacher_path,
                                  "a local Hugging Face model folder (with config.json)", "not found")
        if cfg.qat_bits is not None:
            quantizer = settings.get("quantizer") or {}
            grid = self._qat_grid(quantizer)
            if grid == "quanto":
                try:
                    import optimum.quanto  # noqa: F401
                except Exception as exc:
                    raise MissingDependencyError(self.name, "optimum.quanto", "pip install optimum-quanto",
                                                 exc) from exc
            if quantizer.get("bits") is not None and quantizer.get("bits") != cfg.qat_bits and (
                    quantizer.get("backend") == "quanto" or grid == "quantizer"):
                raise ConfigError("distiller.qat_bits", cfg.qat_bits, f"the bits of the {quantizer.get('backend')} "
                                  f"quantizer that follows (quantizer.bits={quantizer.get('bits')})",
                                  "training against one precision and exporting another wastes the QAT")
        if cfg.resume and cfg.checkpoint_every == 0 and cfg.checkpoint_dir is None:
            raise ConfigError("distiller.resume", True, "resume together with distiller.checkpoint_every > 0 "
                              "or a distiller.checkpoint_dir")

    def _qat_grid(self, quantizer: Mapping[str, Any]) -> str:
        """'quantizer' or 'quanto': whose grid QAT simulates, given the run's quantizer settings (config time)."""
        grid = self.config.qat_grid
        if grid == "quanto":
            return grid
        backend = quantizer.get("backend") if isinstance(quantizer, Mapping) else None
        offers = False
        if backend:
            from slimkit.core.registry import default_registry

            offers = callable(getattr(default_registry().get(Kind.QUANTIZER, backend), "simulate", None))
        if grid == "quantizer" and not offers:
            raise ConfigError("distiller.qat_grid", grid, "'quanto' or 'auto' (this run's quantizer, "
                              f"{backend or 'none'!r}, offers no grid simulation), or a quantizer that does "
                              "(e.g. quantizer=autoround)")
        return "quantizer" if offers else "quanto"

    # --- teacher and student --------------------------------------------------------------------
    def teacher(self, state) -> torch.nn.Module:
        """The frozen teacher: ``state.reference`` or the model in ``teacher_path`` (vocabularies checked)."""
        if self.config.teacher_path is None:
            reference = state.reference
            if any(p.device.type == "meta" for p in reference.parameters()):
                raise PluginError("kd: state.reference holds no weights (meta device); a stage that distils from the "
                                  "original model must say needs_reference so the pipeline loads it")
            return reference.eval().requires_grad_(False)
        if self._teacher_cache is None:
            self._teacher_cache = self._load_teacher(state)
        return self._teacher_cache

    def _load_teacher(self, state) -> torch.nn.Module:
        from transformers import AutoConfig, AutoTokenizer

        from slimkit.models import load_pretrained

        path = str(Path(self.config.teacher_path).expanduser())
        student_vocab = state.model.config.vocab_size
        teacher_vocab = AutoConfig.from_pretrained(path).vocab_size
        if teacher_vocab != student_vocab:
            raise ConfigError("distiller.teacher_path", self.config.teacher_path,
                              f"a teacher with the student's vocabulary ({student_vocab} tokens)",
                              f"its vocab_size is {teacher_vocab}; logit distillation needs the same tokenizer")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError):
            tokenizer = None  # no tokenizer files: the vocab size check above is all we can do
        if tokenizer is not None and state.tokenizer is not None and tokenizer.get_vocab() != state.tokenizer.get_vocab():
            raise ConfigError("distiller.teacher_path", self.config.teacher_path,
                              "a teacher whose tokenizer maps tokens to the same ids as the student's",
                              "same vocab size but a different token→id mapping")
        return load_pretrained(path, dtype=next(state.model.parameters()).dtype).requires_grad_(False)

    def _student(self, state, teacher: torch.nn.Module) -> tuple[torch.nn.Module, list[int] | None, int]:
        cfg = self.config
        if cfg.student_layers is None:
            return state.model, None, state.model.config.num_hidden_layers
        base = state.model if cfg.student_from == "model" else teacher
        _, layers = decoder_layers(base)
        keep = resolve_layers(cfg.student_layers, len(layers))
        return drop_layers(base, keep), keep, len(layers)

    def _layer_map(self, student: torch.nn.Module, teacher: torch.nn.Module, keep: list[int] | None,
                   base_layers: int) -> list[list[int]]:
        n_s, n_t = student.config.num_hidden_layers, teacher.config.num_hidden_layers
        if self.config.layer_map is not None:
            pairs = self.config.layer_map
        elif keep is not None and base_layers == n_t:  # student cut from a model as deep as the teacher
            pairs = [[i, k] for i, k in enumerate(keep)]
        elif n_s == n_t:
            pairs = [[i, i] for i in range(n_s)]
        else:
            raise ConfigError("distiller.layer_map", None, "explicit [student, teacher] layer pairs",
                              f"the student has {n_s} layers and the teacher {n_t}")
        bad = [p for p in pairs if p[0] >= n_s or p[1] >= n_t]
        if bad:
            raise ConfigError("distiller.layer_map", pairs, f"pairs with student index < {n_s} and teacher index < {n_t}",
                              f"{bad} out of range")
        if student.config.hidden_size != teacher.config.hidden_size:
            raise ConfigError("distiller.hidden_weight", self.config.hidden_weight, "0 when the student's hidden size "
                              f"({student.config.hidden_size}) differs from the teacher's ({teacher.config.hidden_size})")
        return pairs

    # --- training -------------------------------------------------------------------------------
    def _loss_fn(self, teacher: torch.nn.Module, layer_map: list[list[int]] | None):
        cfg = self.config
        hidden = bool(cfg.hidden_weight) and bool(layer_map)
        t_layers = decoder_layers(teacher)[1] if hidden else None
        s_idx = [p[0] for p in layer_map or []]
        t_idx = [p[1] for p in layer_map or []]

        def loss_fn(model, batch):
            if not hidden:
                with torch.no_grad():
                    t_logits = teacher(input_ids=batch, use_cache=False).logits
                s_logits = model(input_ids=batch, use_cache=False).logits
                return kd_logit_loss(s_logits, t_logits, batch, cfg.temperature, cfg.alpha)
            with torch.no_grad(), LayerOutputs(t_layers, t_idx) as t_hidden:
                t_logits = teacher(input_ids=batch, use_cache=False).logits
            s_layers = decoder_layers(getattr(model, "module", model))[1]  # unwrap a DDP wrapper
            with LayerOutputs(s_layers, s_idx) as s_hidden:
                s_logits = model(input_ids=batch, use_cache=False).logits
            loss, parts = kd_logit_loss(s_logits, t_logits, batch, cfg.temperature, cfg.alpha)
            mse = hidden_mse(s_hidden, t_hidden, layer_map)
            parts["hidden_mse"] = mse.item()
            return loss + cfg.hidden_weight * mse, parts

        return loss_fn

    def _fingerprint(self, state, student, teacher) -> dict[str, Any]:
        cfg = dataclasses.asdict(self.config)
        settings = state.settings or {}
        return {
            "student": fingerprint_model(student) + ":" + _hash_weights(student),
            "teacher": fingerprint_model(teacher) + ":" + _hash_weights(teacher),
            "distiller": json.dumps({k: v for k, v in cfg.items() if k not in RESUMABLE_CHANGES}, sort_keys=True,
                                    default=str),
            "data": hashlib.sha256(state.data.train.numpy().tobytes()).hexdigest()[:16] + f":{tuple(state.data.train.shape)}",
            "upstream": json.dumps({k: settings.get(k) for k in ("model", "pruner")}, sort_keys=True, default=str),
        }

    def _split(self, state) -> tuple[torch.Tensor, torch.Tensor]:
        windows = state.data.train
        n_val = int(round(windows.shape[0] * self.config.val_fraction)) if self.config.eval_every else 0
        if self.config.eval_every and self.config.val_fraction > 0:
            n_val = max(1, n_val)
        if n_val >= windows.shape[0]:
            raise ConfigError("distiller.val_fraction", self.config.val_fraction,
                              "a fraction that leaves at least one training window",
                              f"data.train has only {windows.shape[0]} windows")
        return windows[: windows.shape[0] - n_val], windows[windows.shape[0] - n_val:]

    def _placement(self, state) -> tuple[bool, torch.device]:
        """(train on CPU?, this process's device): ``cpu`` unset follows the model's device."""
        from accelerate import PartialState

        cpu = self.config.cpu
        if cpu is None:
            cpu = next(state.model.parameters()).device.type == "cpu"
        return cpu, PartialState(cpu=cpu).device

    def apply(self, state) -> dict[str, Any]:
        cfg = self.config
        cpu, device = self._placement(state)
        teacher = self.teacher(state).to(device)  # each data-parallel process holds its own teacher
        student, keep, base_layers = self._student(state, teacher)
        student.requires_grad_(True)
        layer_map = self._layer_map(student, teacher, keep, base_layers) if cfg.hidden_weight else None
        train, validation = self._split(state)
        checkpoint_dir = Path(cfg.checkpoint_dir).expanduser() if cfg.checkpoint_dir else state.work_dir / "checkpoints"
        fingerprint = self._fingerprint(state, student, teacher) if (cfg.checkpoint_every or cfg.resume) else {}
        qat_modules, undo_qat, qat_grid = None, None, None
        if cfg.qat_bits is not None:
            qat_grid = "quantizer" if state.simulate_quantization is not None and cfg.qat_grid != "quanto" else "quanto"
            if cfg.qat_grid == "quantizer" and qat_grid != "quantizer":
                raise ConfigError("distiller.qat_grid", cfg.qat_grid, "'quanto' or 'auto': this run has no quantizer "
                                  "that offers a grid simulation")
            if qat_grid == "quantizer":
                undo_qat = state.simulate_quantization(student)
                qat_modules = sum(1 for _ in _parametrized(student))
            else:
                from .qat import disable_qat, enable_qat

                qat_modules = enable_qat(student, cfg.qat_bits, cfg.qat_exclude)
                undo_qat = lambda: disable_qat(student)  # noqa: E731
        settings = LoopSettings(
            max_steps=cfg.max_steps, lr=cfg.lr, batch_size=cfg.batch_size,
            seed=state.seed if cfg.seed is None else cfg.seed, weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup_steps, grad_clip=cfg.grad_clip, eval_every=cfg.eval_every, patience=cfg.patience,
            checkpoint_every=cfg.checkpoint_every, checkpoint_dir=checkpoint_dir if (cfg.checkpoint_every or cfg.resume)
            else None, keep_checkpoints=cfg.keep_checkpoints, resume=cfg.resume, fingerprint=fingerprint,
            keep_zeros=state.zero_masks, cpu=cpu, desc="distilling" + (f" (QAT int{cfg.qat_bits})" if cfg.qat_bits else ""), key="distiller")
        try:
            metrics = train_loop(student, self._loss_fn(teacher, layer_map), train, settings, validation=validation)
        finally:
            if undo_qat is not None:
                undo_qat()
        student.requires_grad_(False).eval()
        state.model = student
        from slimkit.models import count_parameters

        metrics.update(student_parameters=count_parameters(student), teacher_parameters=count_parameters(teacher),
                       teacher_device=str(device),
                       validation_windows=int(validation.shape[0]), train_windows=int(train.shape[0]))
        if keep is not None:
            metrics["kept_layers"] = keep
        if qat_modules is not None:
            metrics.update(qat_bits=cfg.qat_bits, qat_modules=qat_modules, qat_grid=qat_grid)
        metrics.pop("history", None)
        return metrics

    def recover(self, state, steps: int) -> dict[str, Any]:
        """Recovery step for pruning schedules: ``steps`` distillation steps of ``state.model`` from
        the teacher at ``recovery_lr`` (no dropped layers, QAT, checkpoints or validation)."""
        if steps <= 0:
            return {"steps": 0}
        cfg = self.config
        cpu, device = self._placement(state)
        teacher = self.teacher(state).to(device)
        state.model.requires_grad_(True)
        lr = cfg.lr if cfg.recovery_lr is None else cfg.recovery_lr
        settings = LoopSettings(max_steps=steps, lr=lr, batch_size=cfg.batch_size,
                                seed=state.seed if cfg.seed is None else cfg.seed, weight_decay=cfg.weight_decay,
                                warmup_steps=cfg.warmup_steps, grad_clip=cfg.grad_clip, cpu=cpu,
                                keep_zeros=state.zero_masks, desc="recovery distillation", key="distiller")
        metrics = train_loop(state.model, self._loss_fn(teacher, None), state.data.train, settings)
        state.model.eval()
        return {"method": "kd", "lr": lr, **metrics}
