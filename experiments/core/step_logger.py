"""A logger view whose steps continue across consecutive Lightning fits of one series.

Every `Trainer` starts at global step 0; a model co-trained one epoch per fit (recsys' three TCD models)
would otherwise restart its curve at 0 each time and overwrite itself in CSV / TensorBoard. The view
adds the series' offset to every step and tells the RunContext where the series got to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import Logger

if TYPE_CHECKING:
    from experiments.core.run_context import RunContext


class ContinuingStepLogger(Logger):
    """Delegates to `inner`, shifting steps by where `series` stopped; finalising is left to the RunContext."""

    def __init__(self, inner: Logger, ctx: RunContext, series: str) -> None:
        super().__init__()
        self.inner, self._ctx, self._series = inner, ctx, series
        self._offset = ctx.next_step(series)

    @property
    def name(self) -> str | None:
        return self.inner.name

    @property
    def version(self) -> int | str | None:
        return self.inner.version

    @property
    def save_dir(self) -> str | None:
        return self.inner.save_dir

    @property
    def log_dir(self) -> str | None:
        return getattr(self.inner, "log_dir", None)

    @property
    def root_dir(self) -> str | None:
        return getattr(self.inner, "root_dir", None)

    @property
    def experiment(self) -> Any:
        return self.inner.experiment

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        absolute = self._offset + (step or 0)
        self.inner.log_metrics(metrics, step=absolute)
        self._ctx.advance_step(self._series, absolute)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the resolved config was logged once when the run's loggers were created

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        self.inner.log_graph(model, input_array)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.inner.after_save_checkpoint(checkpoint_callback)

    def save(self) -> None:
        self.inner.save()

    def finalize(self, status: str) -> None:
        self.inner.save()  # the run's loggers are finalised once, by RunContext.close, with the run's status
