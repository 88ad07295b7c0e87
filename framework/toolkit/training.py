"""The shared training loop (fine-tuning and distillation) and the default recovery step.

:func:`train_loop` runs a loss function over token windows with ``accelerate``: a progress bar
showing the loss, periodic held-out evaluation, early stopping, atomic checkpoints (safetensors +
JSON, never pickle) and exact resume. :func:`finetune` (plain next-token fine-tuning) is the
recovery step pruning schedules call when no distiller provides one.

Multi-GPU: the loop shards every batch across processes and lets ``accelerate`` all-reduce the
gradients, so ``accelerate launch --num_processes 4 -m slimkit.cli distiller=kd distiller.cpu=false ...``
trains data-parallel; checkpoints are written by the main process only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from tqdm.auto import tqdm

from slimkit.core.errors import ArtifactError, ConfigError

log = logging.getLogger("slimkit")

#: a loss function: (model, batch of token windows) -> (scalar loss, float parts for logging)
LossFn = Callable[[torch.nn.Module, torch.Tensor], "tuple[torch.Tensor, dict[str, float]]"]

CHECKPOINT_PREFIX = "step-"
STUDENT_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"


def next_token_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on a batch of token windows."""
    from slimkit.evaluation.metrics import next_token_nll

    return next_token_nll(model(input_ids=batch, use_cache=False).logits, batch)


@dataclasses.dataclass
class LoopSettings:
    """What :func:`train_loop` does; every field has a safe default."""

    max_steps: int
    lr: float = 5e-5
    batch_size: int = 4
    seed: int = 0
    weight_decay: float = 0.0
    #: linear warm-up steps, then a constant rate (a schedule independent of max_steps keeps resume exact)
    warmup_steps: int = 0
    #: clip the gradient norm (0: off)
    grad_clip: float = 1.0
    #: evaluate on the validation windows every N steps (0: never)
    eval_every: int = 0
    #: stop after this many evaluations without improvement (0: never stop early)
    patience: int = 0
    #: write a checkpoint every N steps into ``checkpoint_dir`` (0: never; the last step is always written when on)
    checkpoint_every: int = 0
    checkpoint_dir: Optional[Path] = None
    #: checkpoints kept on disk (oldest removed first)
    keep_checkpoints: int = 2
    #: continue from the latest checkpoint in ``checkpoint_dir``
    resume: bool = False
    #: what a checkpoint must match to be resumed from (model shapes, config, data)
    fingerprint: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: keep exact zeros (pruning masks) of 2-D weights at zero
    keep_zeros: bool = True
    #: run on CPU even when an accelerator is visible
    cpu: bool = True
    desc: str = "training"
    #: the config key prefix used in error messages (e.g. 'distiller')
    key: str = "training"


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """The window indices of optimizer step ``step``: a fresh permutation every epoch, a pure
    function of (n, batch_size, step, seed), so a resumed run sees the same batches."""
    per_epoch = math.ceil(n / batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    return perm.split(batch_size)[i]


def shard(indices: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, float]:
    """This process's windows of a global batch and the weight of its mean loss (``world`` processes).

    Windows are dealt round-robin; the weight is ``local windows * world / global windows``, so averaging the
    processes' weighted gradients gives the global batch's mean exactly, shares of unequal size included. A
    process left without a window (a batch smaller than ``world``) runs the first window at weight 0: it
    still joins the gradient all-reduce but adds nothing.
    """
    if world <= 1:
        return indices, 1.0
    mine = indices[rank::world]
    if mine.numel() == 0:
        return indices[:1], 0.0
    return mine, mine.numel() * world / indices.numel()


def fingerprint_model(model: torch.nn.Module) -> str:
    """A short hash of a model's config and parameter names/shapes."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        cfg = config.to_dict()
        for k in ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures"):
            cfg.pop(k, None)
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}".encode())
    return h.hexdigest()[:16]


def fingerprint_tensor(t: torch.Tensor) -> str:
    """A short hash of a tensor's shape and contents."""
    return hashlib.sha256(str(tuple(t.shape)).encode() + t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


# --- checkpoints --------------------------------------------------------------------------------

def _unique_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers, each shared storage once (safetensors refuses shared tensors)."""
    from slimkit.toolkit.storage import unique_tensors

    return {name: t.cpu() for name, t in unique_tensors(model.state_dict()).items()}


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, slots in sd["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{slot}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{slot}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, slot = key.split(".", 1)
        state.setdefault(int(idx), {})[slot] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (a partial write has no trainer.json)."""
    if not directory or not Path(directory).is_dir():
        return []
    found = [p for p in Path(directory).iterdir()
             if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    trainer: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step-<n>/`` atomically (temporary folder, then rename) and prune old checkpoints."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{CHECKPOINT_PREFIX}{trainer['step']:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=directory))
    try:
        save_file(_unique_tensors(model), str(tmp / STUDENT_FILE), metadata={"format": "pt"})
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        save_file(opt_tensors, str(tmp / OPTIMIZER_FILE), metadata={"format": "pt"})
        (tmp / TRAINER_FILE).write_text(json.dumps({**trainer, "optimizer": opt_meta}, indent=1, default=str))
        for name in os.listdir(tmp):
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoints(directory)[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    fingerprint: Mapping[str, Any], key: str = "training") -> dict[str, Any]:
    """Restore model weights and optimizer state from ``path``; return its trainer record.

    Raises :class:`ConfigError` when the checkpoint was written for another model or config.
    """
    from safetensors.torch import load_file

    trainer = json.loads((path / TRAINER_FILE).read_text())
    saved = trainer.get("fingerprint", {})
    wanted = json.loads(json.dumps(dict(fingerprint), default=str))
    differs = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differs:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {wanted.get(k)!r}" for k in differs[:4])
        raise ConfigError(f"{key}.resume", True, f"a checkpoint written by the same model and {key} config",
                          f"{path} differs in {', '.join(differs)} ({detail}); point {key}.checkpoint_dir elsewhere "
                          f"or set {key}.resume=false to start afresh")
    weights = load_file(str(path / STUDENT_FILE))
    own = _unique_tensors(model)
    if set(weights) != set(own):
        missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
        raise ArtifactError(f"checkpoint {path} does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    params = dict(model.state_dict(keep_vars=True))
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    opt_tensors = load_file(str(path / OPTIMIZER_FILE))
    optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, trainer["optimizer"]))
    return trainer


# --- the loop -----------------------------------------------------------------------------------

def evaluate_loss(model: torch.nn.Module, loss_fn: LossFn, windows: torch.Tensor, batch_size: int,
                  device: torch.device | None = None) -> dict[str, float]:
    """Mean loss (and mean parts) of ``loss_fn`` over ``windows``, without gradients."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start:start + batch_size]
            if device is not None:
                batch = batch.to(device)
            loss, parts = loss_fn(model, batch)
            n = batch.shape[0]
            for k, v in {"loss": loss.item(), **parts}.items():
                totals[k] = totals.get(k, 0.0) + v * n
            count += n
    model.train(was_training)
    return {k: v / count for k, v in totals.items()}


def train_loop(model: torch.nn.Module, loss_fn: LossFn, train: torch.Tensor, settings: LoopSettings,
               validation: torch.Tensor | None = None, params: list[torch.nn.Parameter] | None = None) -> dict[str, Any]:
    """Train ``model`` in place on ``train`` windows with ``loss_fn``; return metrics.

    Early stopping restores nothing: the weights of the last step are kept, and the best
    validation loss and its step are reported.
    """
    from accelerate import Accelerator

    s = settings
    if s.max_steps < 0:
        raise ConfigError(f"{s.key}.max_steps", s.max_steps, "an integer >= 0")
    if s.resume and not s.checkpoint_dir:
        raise ConfigError(f"{s.key}.resume", True, "resume only with a checkpoint folder",
                          "checkpointing is off (checkpoint_every=0 and no checkpoint_dir)")
    accelerator = Accelerator(cpu=s.cpu)
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad and p.is_floating_point()]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    for group in optimizer.param_groups:
        group["initial_lr"] = s.lr
    trainer: dict[str, Any] = {"step": 0, "best_val_loss": None, "best_step": None, "bad_evals": 0,
                               "history": [], "fingerprint": dict(s.fingerprint), "stopped_early": False}
    if s.resume:
        found = checkpoints(s.checkpoint_dir)
        if not found:
            raise ArtifactError(f"{s.key}.resume=true but {s.checkpoint_dir} holds no complete checkpoint "
                                f"({CHECKPOINT_PREFIX}<n>/ with {TRAINER_FILE}); set {s.key}.resume=false to start afresh")
        trainer = load_checkpoint(found[-1], model, optimizer, s.fingerprint, s.key)
        trainer.pop("optimizer", None)
        log.info("resumed from %s (step %d)", found[-1], trainer["step"])
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    masks = {p: (p != 0) for p in params if s.keep_zeros and p.dim() == 2 and bool((p == 0).any())}
    rank, world = accelerator.process_index, accelerator.num_processes

    def lr_at(step: int) -> float:
        return s.lr * min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps else s.lr

    def checkpoint() -> None:
        if s.checkpoint_dir and s.checkpoint_every:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_checkpoint(Path(s.checkpoint_dir), accelerator.unwrap_model(model), optimizer, trainer,
                                s.keep_checkpoints)

    losses: list[float] = []
    first_loss = None
    start_step = trainer["step"]
    model.train()
    bar = tqdm(range(start_step, s.max_steps), desc=s.desc, leave=False, disable=not accelerator.is_main_process,
               initial=start_step, total=s.max_steps)
    for step in bar:
        batch, share = shard(batch_indices(train.shape[0], s.batch_size, step, s.seed), rank, world)
        batch = train[batch].to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss, parts = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        # data parallel: gradients are averaged over processes, so weight each process's mean loss by its
        # share of the global batch; the sum is then the global batch's mean, as in one process
        accelerator.backward(loss * share)
        for p, mask in masks.items():
            if p.grad is not None:
                p.grad.mul_(mask)
        if s.grad_clip:
            accelerator.clip_grad_norm_(params, s.grad_clip)
        optimizer.step()
        if masks:
            with torch.no_grad():
                for p, mask in masks.items():
                    p.mul_(mask)
        value = accelerator.reduce(loss.detach() * share, "mean").item() if world > 1 else loss.item()
        first_loss = value if first_loss is None else first_loss
        losses.append(value)
        trainer["step"] = step + 1
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        record: dict[str, Any] = {"step": step + 1, "loss": value, **parts}
        if s.eval_every and validation is not None and validation.shape[0] and (step + 1) % s.eval_every == 0:
            val = evaluate_loss(model, loss_fn, validation, s.batch_size, device)
            record.update({f"val_{k}": v for k, v in val.items()})
            best = trainer["best_val_loss"]
            if best is None or val["loss"] < best:
                trainer.update(best_val_loss=val["loss"], best_step=step + 1, bad_evals=0)
            else:
                trainer["bad_evals"] += 1
            bar.set_postfix(loss=f"{value:.4f}", val=f"{val['loss']:.4f}", refresh=False)
        trainer["history"].append(record)
        stop = bool(s.patience) and trainer["bad_evals"] >= s.patience
        if stop or (s.checkpoint_every and (step + 1) % s.checkpoint_every == 0) or step + 1 == s.max_steps:
            trainer["stopped_early"] = stop
            checkpoint()
        if stop:
            log.info("early stop at step %d: validation loss has not improved for %d evaluations", step + 1, s.patience)
            break
    bar.close()
    model = accelerator.unwrap_model(model)
    model.eval()
    done = trainer["step"] - start_step
    metrics: dict[str, Any] = {"steps": trainer["step"], "steps_this_run": done, "resumed_from_step": start_step or None,
                               "stopped_early": trainer["stopped_early"], "best_val_loss": trainer["best_val_loss"],
                               "best_step": trainer["best_step"], "masked_parameters": len(masks),
                               "processes": world}
    if losses:
        tail = losses[-5:]
        metrics.update(first_loss=first_loss, last_loss=losses[-1], last_loss_mean5=sum(tail) / len(tail))
    return metrics


def finetune(state, steps: int, lr: float = 5e-5, batch_size: int = 4) -> dict[str, Any]:
    """Fine-tune ``state.model`` for ``steps`` optimizer steps of next-token loss on ``state.data.train``.

    Zeros already in the weights (pruning masks) are kept: gradients of zero weights are masked.
    """
    if steps <= 0:
        return {"steps": 0}

    def loss_fn(model, batch):
        return next_token_loss(model, batch), {}

    settings = LoopSettings(max_steps=steps, lr=lr, batch_size=batch_size, seed=state.seed, grad_clip=0.0,
                            keep_zeros=state.zero_masks, desc="recovery fine-tune")
    metrics = train_loop(state.model, loss_fn, state.data.train, settings)
    metrics["last_perplexity_train"] = math.exp(metrics["last_loss_mean5"])
    return metrics
