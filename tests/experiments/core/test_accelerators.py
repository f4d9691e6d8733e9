"""A GPU asked of a task is used or refused: tasks whose code computes on CPU only stop in one line
instead of running on CPU while a scheduler holds a GPU for them."""

from __future__ import annotations

import pytest

from common.errors import UserError
from experiments.core.validation.config_check import check_accelerator


@pytest.mark.parametrize(
    ("overrides", "uses_gpu"),
    [
        (["task=polarity"], True),
        (["task=erc"], True),
        (["experiment=memorability_train_captions", "hydra.mode=RUN"], True),
        (["task=recsys"], False),
        (["task=memorability"], False),
        (["task=cqil"], False),
    ],
)
def test_a_gpu_is_refused_exactly_where_the_task_computes_on_cpu(make_config, overrides, uses_gpu) -> None:
    for accelerator in ("gpu", "cuda"):
        cfg = make_config(*overrides, f"trainer.accelerator={accelerator}")
        if uses_gpu:
            check_accelerator(cfg)
        else:
            with pytest.raises(UserError, match=rf"^trainer\.accelerator={accelerator}: the \w+ task computes on CPU only"):
                check_accelerator(cfg)
    for accelerator in ("cpu", "auto"):
        check_accelerator(make_config(*overrides, f"trainer.accelerator={accelerator}"))


def test_the_refusal_says_what_to_set(make_config) -> None:
    with pytest.raises(UserError) as error:
        check_accelerator(make_config("task=memorability", "trainer=gpu"))
    assert "set trainer.accelerator=cpu" in str(error.value) and "model.predictor.device=cuda" in str(error.value)


def test_the_command_line_stops_before_any_work(run_cli, tmp_path) -> None:
    result = run_cli("task=recsys", "trainer=gpu", "logger=none")
    assert result.returncode == 2
    assert result.stderr.startswith("error: trainer.accelerator=gpu: the recsys task computes on CPU only")
    assert result.stderr.count("\n") == 1 and not list(tmp_path.rglob("metrics.json"))
