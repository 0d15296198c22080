"""The one training loop: fit_vae, pretrain_prior, train_diffusion and finetune_disc each give it a
loss and its data (and its checkpoints).

* Accelerate: one process on a CPU here; ``accelerate launch --multi_gpu --num_processes N -m
  talk.cli.main train-diffusion`` runs the same code data-parallel on N GPUs (add ``--num_machines``,
  ``--machine_rank``, ``--main_process_ip``, ``--main_process_port`` for several nodes; with
  ``base.device: cpu`` the same launch gives N gloo processes on CPUs). ``batch_size`` is the
  global batch: each rank takes its slice of every global batch; only rank 0 writes.
* AdamW, linear LR warm-up (then constant or cosine), gradient clipping, EMA of the weights,
  bf16 autocast on CUDA (``mixed_precision: auto``), gradient checkpointing in the model config.
* Resumable by re-running: a checkpoint every ``checkpoint_every`` steps holds the model, EMA,
  optimiser, LR scheduler, step, RNG states and the run's config; safetensors for tensors, JSON
  for the rest, nothing pickled. The data order resumes through the sampler's start index and
  every per-step random draw comes from a generator seeded by (seed, step, rank), so N steps
  straight and N/2 + resume + N/2 give the same weights.
* Checkpoints of one configuration live in ``<checkpoints>/<fingerprint>/step-XXXXXXX``: a
  changed hyperparameter starts a fresh run instead of resuming a foreign one; ``steps`` (and
  logging knobs) are not part of the fingerprint, so raising ``steps`` continues a finished run
  (refused for a cosine schedule, whose shape depends on ``steps``).
* A non-finite loss (or gradient norm) stops the run with one line naming the step and the loss
  terms. ``EarlyStopping`` (validation every N steps, patience) is checkpointed too: a stopped
  run stays stopped when re-run, and its best weights survive. The logged curve (``history``)
  is part of every checkpoint, so a resumed run reports the whole curve.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from talk.artifacts.files import load_safetensors, read_json, save_safetensors
from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.fs import atomic_dir
from talk.core.params import one_of, rng, to_plain

if TYPE_CHECKING:
    import torch
    from torch import nn

# Config fields that do not change what is computed (left out of the run fingerprint).
NOT_FINGERPRINTED = {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "workers", "sample_every"}


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Optimisation and bookkeeping knobs of a training stage: the ``loop:`` block of its section.

    One type for every training stage; each stage's ``Config`` gives its own defaults (params.yaml's)."""

    steps: int = dataclasses.field(default=500, metadata=rng(0))  # optimiser steps in total (a re-run resumes up to here)
    batch_size: int = dataclasses.field(default=16, metadata=rng(1))  # samples per step, all processes together
    lr: float = dataclasses.field(default=3e-4, metadata=rng(0.0))  # AdamW peak learning rate
    weight_decay: float = dataclasses.field(default=0.01, metadata=rng(0.0))  # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW (beta1, beta2)
    warmup_steps: int = dataclasses.field(default=50, metadata=rng(0))  # steps of linear LR warm-up from 0
    lr_schedule: str = dataclasses.field(default="constant", metadata=one_of("constant", "cosine"))  # after warm-up: constant, or cosine decay to 0 at `steps`
    grad_clip: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # max global grad norm (0 = no clipping)
    ema_decay: float = dataclasses.field(default=0.999, metadata=rng(0.0, 1.0))  # EMA of the weights, capped by (1+step)/(10+step); 0 = no EMA
    mixed_precision: str = dataclasses.field(default="auto", metadata=one_of("auto", "no", "bf16", "fp16"))  # auto: bf16 on CUDA, off on CPU
    checkpoint_every: int = dataclasses.field(default=100, metadata=rng(1))  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = dataclasses.field(default=2, metadata=rng(1))  # newest checkpoints kept
    log_every: int = dataclasses.field(default=10, metadata=rng(1))  # steps between logged loss points
    workers: int = dataclasses.field(default=0, metadata=rng(0))  # DataLoader worker processes (0 = in the main process)


def loop_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(LoopConfig)]


def loop_field(**values):
    """A stage config's ``loop`` field whose default is ``LoopConfig(**values)`` (params.yaml's)."""
    return dataclasses.field(default_factory=lambda: LoopConfig(**values))


def fingerprint(config: dict) -> str:
    """Short hash of a run's JSON config (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def step_seed(seed: int, step: int, rank: int = 0, stream: str = "") -> int:
    """A 63-bit seed for one step's random draws, independent of anything that came before."""
    digest = hashlib.sha256(f"{seed}/{step}/{rank}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(seed: int, device) -> torch.Generator:
    import torch

    device = torch.device(device)
    g = torch.Generator(device=device if device.type == "cuda" else "cpu")
    return g.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Tensor state <-> safetensors + JSON


def _tensor_file(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_safetensors(path, tensors)


def optimizer_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimizer state_dict -> (flat tensors, JSON part)."""
    import torch

    tensors, scalars = {}, {}
    for idx, st in state["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{name}"] = v
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "python": _plain_tuple(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    import torch

    torch.set_rng_state(tensors["torch"].cpu())
    cuda = [tensors[k].cpu() for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(_tuple(meta["python"]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def _plain_tuple(v):
    return [_plain_tuple(x) for x in v] if isinstance(v, (tuple, list)) else v


def _tuple(v):
    return tuple(_tuple(x) for x in v) if isinstance(v, list) else v


# --------------------------------------------------------------------------------------------
# Data order


class RankSlice:
    """This rank's part of each global batch drawn from an infinite sampler of global indices."""

    def __init__(self, sampler, batch: int, rank: int, world: int):
        self.sampler, self.batch, self.rank, self.world = sampler, batch, rank, world

    def __iter__(self) -> Iterator[int]:
        it = iter(self.sampler)
        while True:
            chunk = [next(it) for _ in range(self.batch * self.world)]
            yield from chunk[self.rank * self.batch : (self.rank + 1) * self.batch]


def to_device(batch: Any, device) -> Any:
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


# --------------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of a model's parameters (buffers copied), on the same device."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def update(self, model: nn.Module, step: int) -> None:
        import torch

        with torch.no_grad():
            self._update(model, step)

    def _update(self, model: nn.Module, step: int) -> None:
        import torch

        d = min(self.decay, (1 + step) / (10 + step))
        ema_p = [p for p in self.model.parameters()]
        src_p = [p.detach().to(q.dtype) for p, q in zip(model.parameters(), ema_p)]
        torch._foreach_lerp_(ema_p, src_p, 1 - d)
        for b, src in zip(self.model.buffers(), model.buffers()):
            b.copy_(src)


@dataclasses.dataclass
class StepResult:
    loss: torch.Tensor  # scalar to minimise
    logs: dict[str, Any]  # values to log: floats, or 0-d tensors (read back with the loss in one transfer)


LossFn = Callable[..., StepResult]  # (model, batch, generator, step) -> StepResult


@dataclasses.dataclass
class EarlyStopping:
    """Stop when the validation loss has not improved for ``patience`` validations.

    A validation returning None (no validation data) changes nothing; a NaN / inf loss is never
    the best and counts as no improvement. The best weights (of ``Trainer.final_model``) are
    kept and checkpointed with the run; ``restore`` loads them back at the end."""

    every: int  # steps between validations (and one at the last step)
    patience: int  # validations without improvement before stopping
    min_delta: float = 1e-4  # an improvement is a loss lower than the best by more than this
    best_loss: float | None = None
    best_step: int | None = None
    waited: int = 0
    stopped: bool = False
    best_state: dict | None = dataclasses.field(default=None, repr=False)  # tensors of the best weights

    def update(self, step: int, loss: float | None, model: nn.Module) -> bool:
        """Record one validation; True when training should stop."""
        if loss is None:
            return False
        if math.isfinite(loss) and (self.best_loss is None or loss < self.best_loss - self.min_delta):
            self.best_loss, self.best_step, self.waited = float(loss), step, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.waited += 1
        self.stopped = self.waited >= self.patience
        return self.stopped

    def restore(self, model: nn.Module) -> None:
        """Load the best weights into ``model`` (nothing when no validation was finite)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def to_json(self) -> dict:
        return {"best_loss": self.best_loss, "best_step": self.best_step, "waited": self.waited, "stopped": self.stopped}

    def load_json(self, d: dict) -> None:
        self.best_loss, self.best_step = d["best_loss"], d["best_step"]
        self.waited, self.stopped = int(d["waited"]), bool(d["stopped"])


@contextlib.contextmanager
def export_dir(out: Path | str, keep: tuple[str, ...] = ("checkpoints",)) -> Iterator[Path]:
    """``atomic_dir(out)`` that carries the subfolders ``keep`` (a stage's checkpoints, kept between
    runs so that re-running resumes) from the old ``out`` into the new one."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        yield tmp
        for name in keep:
            if (out / name).is_dir() and not (tmp / name).exists():
                os.replace(out / name, tmp / name)


def merged_history(rows: list[dict]) -> list[dict]:
    """History rows (``{"step": s, ...}``) merged per step, in step order."""
    by_step: dict[int, dict] = {}
    for row in rows:
        by_step.setdefault(int(row["step"]), {"step": int(row["step"])}).update(row)
    return [by_step[k] for k in sorted(by_step)]


def _terms(logs: dict) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in logs.items() if isinstance(v, (int, float)) and v is not None)


def _to_host(logs: dict, loss, norm) -> tuple[dict[str, float], float, float | None]:
    """(logs as floats, the scalar loss, the gradient norm or None): every tensor among them read
    back in one device-to-host copy."""
    import torch

    names = [k for k, v in logs.items() if isinstance(v, torch.Tensor)]
    loss = loss.float().reshape(())
    parts = [loss, *(logs[k].detach().float().reshape(()) for k in names)]
    if norm is not None:
        parts.append(torch.as_tensor(norm).to(loss.device).float().reshape(()))
    values = torch.stack(parts).tolist()  # the one sync of the step
    out = {k: (values[1 + names.index(k)] if k in names else v) for k, v in logs.items()}
    return out, values[0], (values[-1] if norm is not None else None)


class Trainer:
    """One optimisation run: build optimiser / EMA / Accelerate, resume, step, checkpoint.

    ``stage`` is the `talk` command of the stage (named in the one-line errors about damaged
    checkpoints); ``stopper`` an ``EarlyStopping`` whose state the checkpoints carry. ``history``
    holds every logged row ({"step": s, ...}) and ``extra`` a JSON dict of the stage's own
    counters: both are checkpointed and restored."""

    def __init__(
        self,
        loop: LoopConfig,
        model: nn.Module,
        checkpoints: Path,
        run_config: dict,
        seed: int,
        device: str = "auto",
        name: str = "train",
        stage: str = "",
        stopper: EarlyStopping | None = None,
    ):
        import torch
        from accelerate import Accelerator, DistributedDataParallelKwargs

        self.loop, self.seed, self.name, self.stage, self.stopper = loop, seed, name, stage or name, stopper
        dev = runtime.device(device)
        mp = loop.mixed_precision
        if mp == "auto":
            mp = "bf16" if dev.type == "cuda" else "no"
        if mp == "fp16" and dev.type != "cuda":
            raise TalkError("mixed_precision: fp16 needs a CUDA device (use bf16 or no)")
        self.accelerator = Accelerator(
            mixed_precision=mp,
            cpu=dev.type == "cpu",  # with a torchrun environment (LOCAL_RANK set): multi-process gloo on CPUs
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],  # every trainable weight is used
        )
        acc = self.accelerator
        if loop.batch_size % acc.num_processes:
            raise TalkError(f"batch_size {loop.batch_size} is not divisible by the {acc.num_processes} processes")
        self.local_batch = loop.batch_size // acc.num_processes
        model = model.to(acc.device)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(params, lr=loop.lr, betas=loop.adam_betas, weight_decay=loop.weight_decay)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.model, self.optimizer = acc.prepare(model, self.optimizer)
        self.ema = EMA(self.unwrapped, loop.ema_decay) if loop.ema_decay > 0 else None
        loop_plain = to_plain(loop)
        self.run_config = {"name": name, "seed": seed, "world": acc.num_processes, **run_config,
                           "loop": {k: loop_plain[k] for k in loop_fields()}}
        fp = fingerprint({**self.run_config, "world": None,
                          "loop": {k: v for k, v in self.run_config["loop"].items() if k not in NOT_FINGERPRINTED}})
        self.run_dir = Path(checkpoints) / f"{name}-{fp}"
        self.step = 0
        self.history: list[dict] = []
        self.extra: dict[str, Any] = {}
        self.resumed_from: Path | None = None
        self._resume()

    # ---------------------------------------------------------------- properties

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def final_model(self) -> nn.Module:
        """The weights to ship: the EMA when there is one."""
        return self.ema.model if self.ema is not None else self.unwrapped

    def _lr_factor(self, step: int) -> float:
        loop = self.loop
        if loop.warmup_steps and step < loop.warmup_steps:
            return (step + 1) / loop.warmup_steps
        if loop.lr_schedule == "cosine" and loop.steps > loop.warmup_steps:
            p = min(1.0, (step - loop.warmup_steps) / (loop.steps - loop.warmup_steps))
            return 0.5 * (1 + math.cos(math.pi * p))
        return 1.0

    # ---------------------------------------------------------------- data

    def batches(self, dataset, make_sampler: Callable[[int], Any], collate=None) -> Iterator[dict]:
        """Batches for this rank from the current step on (``make_sampler(start_idx)`` infinite)."""
        import torch

        acc = self.accelerator
        sampler = RankSlice(make_sampler(self.step * self.loop.batch_size), self.local_batch, acc.process_index, acc.num_processes)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self.local_batch,
            sampler=sampler,
            num_workers=self.loop.workers,
            collate_fn=collate,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
            # its own generator: the loader's base seed must not draw from the global RNG, whose state
            # the checkpoints restore (a resumed run would otherwise draw dropout masks one step off)
            generator=torch.Generator().manual_seed(step_seed(self.seed, self.step, acc.process_index, "loader")),
        )
        for batch in loader:
            yield to_device(batch, self.device)

    def generator(self, stream: str = "") -> torch.Generator:
        """This step's generator (same draws whether the run was resumed or not)."""
        return generator(step_seed(self.seed, self.step, self.accelerator.process_index, stream), self.device)

    # ---------------------------------------------------------------- stepping

    def _diverged(self, what: str, logs: dict) -> TalkError:
        return TalkError(f"{self.name}: {what} at step {self.step + 1} ({_terms(logs)}); training stopped. "
                         f"Lower the learning rate or check the data and loss weights (the last checkpoint "
                         f"is in {self.run_dir})")

    def train_step(self, batch: dict, loss_fn: LossFn) -> dict[str, float]:
        """One optimiser step. The loss, the logged tensors and the gradient norm reach the host in
        ONE transfer (a GPU then waits for the host once per step, not once per logged value); a
        non-finite loss or gradient norm still stops the run before the optimiser steps."""
        acc = self.accelerator
        self.model.train()
        with acc.autocast():
            result = loss_fn(self.model, batch, self.generator(), self.step)
        self.optimizer.zero_grad(set_to_none=True)
        acc.backward(result.loss)
        norm = acc.clip_grad_norm_(self.model.parameters(), self.loop.grad_clip) if self.loop.grad_clip > 0 else None
        logs, total, grad_norm = _to_host(result.logs, result.loss.detach(), norm)
        if not math.isfinite(total):
            raise self._diverged(f"the loss is {total}", {"total": total, **logs})
        if grad_norm is not None:
            logs["grad_norm"] = grad_norm
            if not math.isfinite(grad_norm) and acc.scaler is None:  # (fp16: the scaler skips the step)
                raise self._diverged(f"the gradient norm is {grad_norm}", logs)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.unwrapped, self.step)
        logs["lr"] = self.lr_scheduler.get_last_lr()[0]
        return logs

    def fit(
        self,
        batches: Iterator[dict],
        loss_fn: LossFn,
        on_log: Callable[[int, dict], None] | None = None,
        on_step: Callable[[int], None] | None = None,
        description: str | None = None,
        validate: Callable[[nn.Module], float | None] | None = None,
    ) -> dict[str, float]:
        """Step until ``loop.steps`` (or the stopper stops); checkpoint on schedule and at the end.

        Per step: the optimiser step, ``on_step(step)`` (e.g. a codebook restart, a preview), every
        ``stopper.every`` steps ``validate(final_model)`` (the stopper's loss), every ``log_every``
        steps ``on_log(step, means)`` (means of the logged values since the last call; non-finite
        values such as an accuracy over no labelled sample are left out of a mean), then the
        checkpoint. Returns timing figures."""
        loop, stopper = self.loop, self.stopper
        start, t0 = self.step, time.perf_counter()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        with runtime.progress() as bar:
            task = bar.add_task(description or self.name, total=loop.steps, completed=self.step)
            while self.step < loop.steps and not (stopper is not None and stopper.stopped):
                logs = self.train_step(next(batches), loss_fn)
                for k, v in logs.items():
                    if v is not None and math.isfinite(float(v)):
                        sums[k] = sums.get(k, 0.0) + float(v)
                        counts[k] = counts.get(k, 0) + 1
                bar.advance(task)
                if on_step is not None:
                    on_step(self.step)
                last = self.step == loop.steps
                if stopper is not None and validate is not None and (self.step % stopper.every == 0 or last):
                    v = validate(self.final_model)
                    if v is not None:
                        self.history.append({"step": self.step, "val_loss": float(v)})
                    stopper.update(self.step, v, self.final_model)
                    last = last or stopper.stopped
                if self.step % loop.log_every == 0 or last:
                    means = {k: v / counts[k] for k, v in sums.items()}
                    self.history.append({"step": self.step, **means})
                    if on_log is not None:
                        on_log(self.step, means)
                    sums, counts = {}, {}
                if self.step % loop.checkpoint_every == 0 or last:
                    self.save()
        seconds = time.perf_counter() - t0
        done = self.step - start
        return {
            "steps_run": done,
            "seconds": round(seconds, 2),
            "samples_per_s": round(done * loop.batch_size / seconds, 2) if done and seconds > 0 else None,
        }

    # ---------------------------------------------------------------- checkpoints

    def checkpoints(self) -> list[Path]:
        if not self.run_dir.is_dir():
            return []
        done = [p for p in self.run_dir.glob("step-*") if (p / "state.json").is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def save(self) -> Path | None:
        """Write ``step-XXXXXXX`` (atomically) on the main process; keep the newest K."""
        acc = self.accelerator
        acc.wait_for_everyone()
        path = self.run_dir / f"step-{self.step:07d}"
        if self.is_main and not path.exists():
            opt_tensors, opt_meta = optimizer_to_files(self.optimizer.state_dict())
            rng_tensors, rng_meta = rng_state()
            with atomic_dir(path) as tmp:
                _tensor_file(tmp / "model.safetensors", self.unwrapped.state_dict())
                if self.ema is not None:
                    _tensor_file(tmp / "ema.safetensors", self.ema.model.state_dict())
                _tensor_file(tmp / "optimizer.safetensors", opt_tensors)
                _tensor_file(tmp / "rng.safetensors", rng_tensors)
                state = {
                    "step": self.step,
                    "optimizer": opt_meta,
                    "lr_scheduler": self.lr_scheduler.state_dict(),
                    "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                    "rng": rng_meta,
                    "config": self.run_config,
                    "history": self.history,
                    "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
                if self.extra:
                    state["extra"] = self.extra
                if self.stopper is not None:
                    state["stopper"] = self.stopper.to_json()
                    if self.stopper.best_state is not None:
                        _tensor_file(tmp / "best.safetensors", self.stopper.best_state)
                (tmp / "state.json").write_text(json.dumps(to_plain(state), indent=1) + "\n")
            for old in self.checkpoints()[: -self.loop.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return path

    def _tensors(self, path: Path, device="cpu") -> dict[str, torch.Tensor]:
        """A checkpoint's safetensors file; damaged: one line naming it and how to go on."""
        try:
            return load_safetensors(path, self.stage, device)
        except TalkError as e:
            raise self._damaged(path, str(e).split(";")[0]) from None

    def _damaged(self, file: Path, what: str) -> TalkError:
        ckpt = file.parent
        return TalkError(f"{what} (checkpoint {ckpt}); delete {ckpt} and re-run `talk {self.stage}` to resume "
                         f"from the checkpoint before it (or from scratch)")

    def _load(self, module: nn.Module, path: Path, device) -> None:
        try:
            module.load_state_dict(self._tensors(path, device), strict=True)
        except RuntimeError as e:
            raise self._damaged(path, f"{path} does not fit this run's model ({str(e).splitlines()[0][:200]})") from None

    def _resume(self) -> None:
        found = self.checkpoints()
        if not found:
            return
        path = found[-1]
        try:
            state = read_json(path / "state.json", self.stage)
            saved_steps = int(state["config"]["loop"]["steps"])
        except (TalkError, KeyError, TypeError, ValueError) as e:
            raise self._damaged(path / "state.json", f"{path / 'state.json'}: unreadable checkpoint state "
                                f"({str(e).split(';')[0] if isinstance(e, TalkError) else type(e).__name__})") from None
        if self.loop.lr_schedule == "cosine" and saved_steps != self.loop.steps:
            raise TalkError(f"{self.name}: the run in {self.run_dir} has a cosine learning-rate schedule that ends at "
                            f"steps={saved_steps}; steps={self.loop.steps} would change the schedule it was trained "
                            f"with. Set loop.steps back to {saved_steps}, or delete {self.run_dir} to start over")
        try:
            self._load(self.unwrapped, path / "model.safetensors", self.device)
            if self.ema is not None:
                if not (path / "ema.safetensors").is_file():
                    raise TalkError(f"{path}: checkpoint has no EMA weights but ema_decay > 0")
                self._load(self.ema.model, path / "ema.safetensors", self.device)
            opt = optimizer_from_files(self._tensors(path / "optimizer.safetensors", self.device), state["optimizer"])
            self.optimizer.load_state_dict(opt)
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
            if state.get("scaler") and self.accelerator.scaler is not None:
                self.accelerator.scaler.load_state_dict(state["scaler"])
            set_rng_state(self._tensors(path / "rng.safetensors"), state["rng"])
            if self.stopper is not None and "stopper" in state:
                self.stopper.load_json(state["stopper"])
                if (path / "best.safetensors").is_file():
                    self.stopper.best_state = self._tensors(path / "best.safetensors", self.device)
        except (KeyError, TypeError, ValueError) as e:
            raise self._damaged(path / "state.json", f"{path / 'state.json'}: inconsistent checkpoint state "
                                f"({type(e).__name__}: {e})") from None
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.extra = dict(state.get("extra", {}))
        self.resumed_from = path
        runtime.log.info("%s: resumed from %s (step %d)", self.name, path, self.step)
