"""Resume points that survive pre-emption: `last.ckpt` written during a fit, not only at its end.

Lightning's ModelCheckpoint with `save_top_k: 0` writes `last.ckpt` only when the fit ends, so a job
killed mid-fit (SLURM pre-emption, a time-out, a crash) lost everything. This callback writes
`<dirpath>/last.ckpt` atomically every `every_n_epochs` epochs (at the end of the epoch, after
validation, so a resume continues exactly) and every `every_n_minutes` of training (at a batch end;
Lightning restarts such an epoch from its beginning). When SIGTERM, SIGUSR1 or SIGUSR2 arrives (how
clusters announce pre-emption and time-outs) it stops the process with exit status 128 + signal, so the
scheduler can requeue it: in an epoch's last batch it first saves at that epoch's end (exact); mid-epoch
it keeps the last epoch-end `last.ckpt` (exact resume, at most one epoch repeated), since Lightning
restarts an interrupted epoch's data loader from its first batch; only with `every_n_epochs=0` does it
save mid-epoch.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from common.errors import UserError

log = logging.getLogger(__name__)
PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")


def capture_rng_states() -> dict[str, Any]:
    """The global generators' states in types `torch.load(weights_only=True)` accepts (no numpy arrays)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of `capture_rng_states`."""
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumableCheckpoint(Callback):
    """Atomic `last.ckpt` per epoch, per time interval and on pre-emption signals."""

    def __init__(
        self,
        dirpath: str,
        every_n_epochs: int = 1,
        every_n_minutes: float | None = 10.0,
        save_on_signals: bool = True,
        filename: str = "last.ckpt",
    ) -> None:
        if every_n_epochs < 0:
            raise UserError(f"callbacks.checkpoint.every_n_epochs={every_n_epochs} must be >= 0 (0 = only on time / signals)")
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise UserError(f"callbacks.checkpoint.every_n_minutes={every_n_minutes} must be > 0 or null")
        self.dirpath, self.filename = Path(dirpath), filename
        self.every_n_epochs, self.every_n_minutes = int(every_n_epochs), every_n_minutes
        self.save_on_signals = save_on_signals
        self._last_save = time.monotonic()
        self._signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._rng_to_restore: dict[str, Any] | None = None

    # -- random-number states ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Called while a checkpoint is written: the states the next epoch (or batch) starts from."""
        return {"rng": capture_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict.get("rng")  # older checkpoints have none: resume as before

    def _restore_rng_once(self, trainer: Any) -> None:
        if self._rng_to_restore is None:
            return
        states, self._rng_to_restore = self._rng_to_restore, None
        if trainer.world_size > 1:  # the checkpoint holds rank 0's states; each rank needs its own
            if trainer.is_global_zero:
                log.warning("a %d-process fit resumes with fresh random-number states: not exact", trainer.world_size)
            return
        restore_rng_states(states)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._restore_rng_once(trainer)  # after Lightning's fit set-up, which draws differently on a restart

    def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self._restore_rng_once(trainer)  # a mid-epoch restart skips on_train_epoch_start

    @property
    def path(self) -> Path:
        return self.dirpath / self.filename

    def save(self, trainer: Any) -> None:
        """All ranks call the trainer's save (a collective for sharded strategies); rank 0 renames."""
        tmp = self.dirpath / f".{self.filename}.tmp"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        self._last_save = time.monotonic()

    # -- signals ---------------------------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        self._signal = signum
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)  # Lightning's own SIGTERM notifier and SLURM requeue handler still run

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_save = time.monotonic()
        if not self.save_on_signals or threading.current_thread() is not threading.main_thread():
            return
        for name in PREEMPTION_SIGNALS:
            signum = getattr(signal, name)
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        if trainer.is_global_zero:
            log.info(
                "checkpoints to %s: every %s epochs, every %s min, and on %s",
                self.path,
                self.every_n_epochs or "–",
                self.every_n_minutes or "–",
                "/".join(PREEMPTION_SIGNALS),
            )

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._restore_handlers()
        if isinstance(exception, SIGTERMException) and self._signal is not None:
            self._exit_status_for_lightnings_stop(trainer, exception)

    def _exit_status_for_lightnings_stop(self, trainer: Any, exception: SIGTERMException) -> None:
        """Lightning's loops raise their own SIGTERMException (exit status 0) when SIGTERM lands between this
        callback's hooks (after a batch's hooks, in validation, after an epoch's end). Such a stop is a
        pre-emption too: it gets the same resume point and the same status 128 + signal."""
        signum = self._signal
        if self.every_n_epochs == 0:
            self.save(trainer)
            log.warning("received %s: saved %s; exiting so the job can be requeued", signal.Signals(signum).name, self.path)
        else:
            log.warning(
                "received %s: exiting so the job can be requeued; it resumes from %s", signal.Signals(signum).name, self.path
            )
        exception.code = 128 + signum

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    # -- saving ----------------------------------------------------------------------------------
    def _save_and_exit(self, trainer: Any) -> None:
        signum = self._signal
        self.save(trainer)
        log.warning("received %s: saved %s; exiting so the job can be requeued", signal.Signals(signum).name, self.path)
        raise SystemExit(128 + signum)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        if self._signal is not None:
            if _last_batch_of_epoch(trainer):
                return  # on_train_epoch_end saves (after validation) and exits: an exact resume point
            if self.every_n_epochs == 0:  # no epoch-end checkpoints asked for: keep what this epoch did
                self._save_and_exit(trainer)
            # Mid-epoch, keep the last epoch-end last.ckpt: Lightning restarts an interrupted epoch's (not
            # resumable) data loader from its first batch, so a mid-epoch save would not resume exactly.
            signum = self._signal
            log.warning(
                "received %s mid-epoch: exiting so the job can be requeued; it resumes from %s",
                signal.Signals(signum).name,
                self.path,
            )
            raise SystemExit(128 + signum)
        if self.every_n_minutes is not None and time.monotonic() - self._last_save >= 60 * self.every_n_minutes:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        if self._signal is not None:
            self._save_and_exit(trainer)
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.save(trainer)
        elif trainer.current_epoch + 1 >= (trainer.max_epochs or 0):
            self.save(trainer)  # the last epoch always leaves a resume point


def _last_batch_of_epoch(trainer: Any) -> bool:
    """Whether the batch that just ended was the epoch's last (Lightning then runs the epoch end, even after
    a SIGTERM, before it stops)."""
    return bool(trainer.fit_loop.epoch_loop._num_ready_batches_reached())
