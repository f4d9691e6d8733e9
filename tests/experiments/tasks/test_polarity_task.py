"""The polarity task end to end, in-process: each experiment's smoke run, the non-negative claim,
transfer on real images, and resume-from-checkpoint reproducibility."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from experiments.core.runner import run_task
from tests.conftest import experiments_of_task

EXPERIMENTS = experiments_of_task("polarity")
SMALL = {  # keep each experiment's smoke run to seconds on 2 CPU cores (MNIST's training files are not offline)
    "polarity_mnist_to_fashion": [
        "dataset.n_val=200",
        "polarity.source.dataset.name=digits",
        "polarity.source.dataset.n_train=300",
        "polarity.source.dataset.n_val=100",
    ],
    "polarity_fashion_mnist": ["dataset.n_val=200", "polarity.source.dataset.n_train=500"],
    "polarity_fashion_mnist_alexnet": [
        "dataset.n_val=200",
        "polarity.source.dataset.n_train=500",
        "model.network.width_mult=0.05",
        "dataset.resize=67",
        "dataset.batch_size=8",
        "dataset.eval_batch_size=50",
        "trainer.accelerator=cpu",
    ],
}


def read_metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_of_every_experiment(experiment: str, make_config, data_dir: Path, tmp_path: Path) -> None:
    cfg = make_config(f"experiment={experiment}", "debug=fast", *SMALL.get(experiment, []))
    run_task(cfg, tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    conditions = list(cfg.polarity.conditions)
    seeds = min(cfg.task.num_seeds, cfg.task.limit)  # debug=fast bounds the seeds through task.limit
    assert seeds == min(2, cfg.task.num_seeds)
    for condition in conditions:
        assert metrics[f"{condition}/runs"] == seeds
        assert 0.0 <= metrics[f"{condition}/val_error_median"] <= 1.0
    records = (tmp_path / "run" / "records.jsonl").read_text().splitlines()
    assert len(records) == len(conditions) * seeds
    assert (tmp_path / "run" / "plots" / "learning_curves.png").stat().st_size > 0
    assert "| condition |" in (tmp_path / "run" / "results.md").read_text()


@pytest.mark.slow
def test_nonnegative_nets_cannot_solve_xor_but_unconstrained_ones_do(make_config, tmp_path: Path) -> None:
    cfg = make_config(
        "experiment=polarity_nonneg_xor",
        "task.num_seeds=4",
        "trainer.max_epochs=40",
        "logger=none",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
    )
    run_task(cfg, tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    assert metrics["nonneg/best_val_acc_max"] <= 0.75  # every seed, every epoch
    assert metrics["unconstrained/best_val_acc_min"] >= 0.95
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert {r["condition"] for r in records} == {"nonneg", "unconstrained"}


@pytest.mark.slow  # source + 6 conditions x 15 epochs
def test_polarity_transfer_on_real_digits(make_config, tmp_path: Path) -> None:
    """Source: digits 0-4 from half the pool; target: all 10 digits from the other half."""
    cfg = make_config(
        "experiment=polarity_fashion_mnist",
        "dataset=digits",
        "dataset.n_train=200",
        "dataset.n_val=150",
        "polarity.source.dataset.n_train=300",
        "polarity.source.max_epochs=5",
        "trainer.max_epochs=8",
        "model.network.channels=[8,16]",
        "model.network.hidden=32",
        "logger=csv",
        "trainer.enable_progress_bar=false",
    )
    run_task(cfg, tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    assert metrics["source/val_error"] < 0.5  # the source really learned digits 0-4
    for condition in cfg.polarity.conditions:
        assert metrics[f"{condition}/val_error_median"] < 0.9  # better than chance on 10 classes
    assert (tmp_path / "run" / "source_network.pt").is_file()
    assert (tmp_path / "run" / "checkpoints" / "freeze_in_pol_seed0" / "last.ckpt").is_file()
    assert "freeze_in_pol_vs_fluid_in_pol/val_error_mwu_p" in metrics
    assert "freeze_in_weight_vs_in_weight/val_error_wilcoxon_p" in metrics


def test_the_source_can_be_another_data_set(make_config, tmp_path: Path) -> None:
    """A `_target_` under polarity.source.dataset replaces the data set instead of overriding it."""
    source = (
        "+polarity.source.dataset={_target_: data.images.ImageDataModule, name: digits, "
        f"root: {tmp_path}, n_train: 200, n_val: 100, classes: [5, 6, 7, 8, 9]}}"
    )
    cfg = make_config(
        "experiment=polarity_fashion_mnist",
        "dataset=digits",
        "dataset.n_train=50",
        "dataset.n_val=150",
        "debug=fast",
        "task.num_seeds=1",
        "~polarity.source.dataset",
        source,
    )
    run_task(cfg, tmp_path / "run")
    import torch

    state = torch.load(tmp_path / "run" / "source_network.pt", weights_only=True)
    assert state["head.weight"].shape[0] == 5  # trained on the 5 classes of the other data module


@pytest.mark.slow
def test_a_saved_source_network_can_be_reused(make_config, tmp_path: Path) -> None:
    common = [
        "experiment=polarity_fashion_mnist",
        "dataset=digits",
        "dataset.n_train=50",
        "dataset.n_val=150",
        "debug=fast",
        "polarity.source.dataset.n_train=100",
        "task.num_seeds=1",
    ]
    run_task(make_config(*common, output_dir=tmp_path / "first"), tmp_path / "first")
    source = tmp_path / "first" / "source_network.pt"
    run_task(make_config(*common, f"polarity.source.checkpoint={source}", output_dir=tmp_path / "second"), tmp_path / "second")
    assert "source/val_error" not in read_metrics(tmp_path / "second")  # loaded, not retrained


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(make_config, tmp_path: Path, caplog) -> None:
    common = ["task.num_seeds=3", "logger=none", "trainer.enable_progress_bar=false", "dataset.n_train=40"]
    run_task(make_config(*common, "trainer.max_epochs=8", output_dir=tmp_path / "straight"), tmp_path / "straight")
    interrupted = tmp_path / "interrupted"
    run_task(make_config(*common, "trainer.max_epochs=4", output_dir=interrupted), interrupted)
    assert read_metrics(interrupted) != read_metrics(tmp_path / "straight")
    with caplog.at_level(logging.INFO, logger="experiments.tasks.polarity.task"):
        run_task(make_config(*common, "trainer.max_epochs=8", "ckpt_path=last", output_dir=interrupted), interrupted)
    assert "population: resuming from" in caplog.text and "epoch" in caplog.text
    assert read_metrics(interrupted) == read_metrics(tmp_path / "straight")


def test_a_rerun_in_the_same_dir_resumes_by_itself_as_on_requeue(make_config, tmp_path: Path, caplog) -> None:
    common = ["task.num_seeds=2", "logger=none", "trainer.enable_progress_bar=false", "dataset.n_train=40"]
    run_task(make_config(*common, "trainer.max_epochs=6", output_dir=tmp_path / "straight"), tmp_path / "straight")
    requeued = tmp_path / "requeued"
    run_task(make_config(*common, "trainer.max_epochs=3", output_dir=requeued), requeued)  # "preempted" after 3
    with caplog.at_level(logging.INFO, logger="experiments.tasks.polarity.task"):
        run_task(make_config(*common, "trainer.max_epochs=6", output_dir=requeued), requeued)  # default ckpt_path
    assert "population: resuming from" in caplog.text
    assert read_metrics(requeued) == read_metrics(tmp_path / "straight")


@pytest.mark.slow
def test_ckpt_path_as_a_run_dir_resumes_each_fit_and_a_single_file_is_refused_for_several(
    make_config, tmp_path: Path, caplog, capsys
) -> None:
    common = [
        "experiment=polarity_fashion_mnist",
        "dataset=digits",
        "dataset.n_train=50",
        "dataset.n_val=150",
        "task.num_seeds=1",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "polarity.source.max_epochs=1",
        "polarity.source.dataset.n_train=100",
    ]
    first = tmp_path / "first"
    run_task(make_config(*common, "trainer.max_epochs=1", output_dir=first), first)
    with caplog.at_level(logging.INFO, logger="experiments.tasks.polarity.task"):
        run_task(
            make_config(*common, "trainer.max_epochs=2", f"ckpt_path={first}", output_dir=tmp_path / "second"),
            tmp_path / "second",
        )
    assert caplog.text.count("resuming from") == 7  # the source and each of the 6 conditions
    with pytest.raises(SystemExit):
        run_task(
            make_config(*common, f"ckpt_path={first / 'checkpoints' / 'source' / 'last.ckpt'}", output_dir=tmp_path / "third"),
            tmp_path / "third",
        )
    assert "is one checkpoint, but this run has several fits" in capsys.readouterr().err
    assert not (tmp_path / "third" / "metrics.json").exists()


def test_tensorboard_logger_receives_curves_final_metrics_and_the_figure(make_config, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config("logger=tensorboard", "task.num_seeds=2", "trainer.max_epochs=3", "trainer.enable_progress_bar=false")
    run_task(cfg, tmp_path / "run")
    events = list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    tags = set()
    for event_file in events:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"]) | set(accumulator.Tags()["images"])
    assert {"val/acc", "freeze_informed/val_error_median", "plots/learning_curves"} <= tags


def test_source_network_does_not_share_the_target_runs_init(make_config, tmp_path: Path) -> None:
    """IN-Polarity must come from an independently initialised network, not from the target's own init."""
    import torch

    from data.images import ImageDataModule
    from models.polarity.networks import SmallCNN

    cfg = make_config(
        "experiment=polarity_fashion_mnist",
        "dataset=digits",
        "dataset.n_train=50",
        "dataset.n_val=150",
        "debug=fast",
        "task.num_seeds=1",
        "polarity.source.dataset.n_train=100",
    )
    run_task(cfg, tmp_path / "run")
    source = torch.load(tmp_path / "run" / "source_network.pt", weights_only=True)
    datamodule = ImageDataModule(name="digits", root=str(tmp_path), n_train=50, n_val=150)
    datamodule.setup("fit")
    torch.manual_seed(0)  # the first target run's init (seed 0)
    target = SmallCNN(**datamodule.network_kwargs, channels=(16, 32), hidden=128)
    # one fast_dev_run step moves weights by ~lr; an identical init would agree almost everywhere in sign
    agreement = (torch.sign(source["features.0.weight"]) == torch.sign(target.features[0].weight)).float().mean()
    assert agreement < 0.8


def _capture_initial_networks(monkeypatch) -> dict[str, dict]:
    """Wrap the task's `fit` to keep each fit's network state as training starts."""
    import experiments.tasks.polarity.task as polarity

    captured: dict[str, dict] = {}
    original = polarity.fit

    def spy(cfg, ctx, fit_name, network, *args, **kwargs):
        captured[fit_name] = {k: v.detach().clone() for k, v in network.state_dict().items()}
        return original(cfg, ctx, fit_name, network, *args, **kwargs)

    monkeypatch.setattr(polarity, "fit", spy)
    return captured


def test_xor_runs_of_one_seed_start_identical_in_the_real_task(make_config, tmp_path: Path, monkeypatch) -> None:
    import torch

    captured = _capture_initial_networks(monkeypatch)
    cfg = make_config("debug=fast", "task.num_seeds=2", "polarity.align=flip")
    run_task(cfg, tmp_path / "run")
    state, conditions = captured["population"], list(cfg.polarity.conditions)
    hidden, output = state["hidden.weight"], state["output.weight"]
    seeds = 2  # runs are condition-major: run = condition * seeds + seed
    for s in range(seeds):
        rows = [c * seeds + s for c in range(len(conditions))]
        for r in rows[1:]:
            assert torch.equal(hidden[r], hidden[rows[0]]) and torch.equal(output[r].abs(), output[rows[0]].abs())
    assert not torch.equal(hidden[0], hidden[1])


@pytest.mark.slow
def test_image_conditions_of_one_seed_start_identical_in_the_real_task(make_config, tmp_path: Path, monkeypatch) -> None:
    import torch

    captured = _capture_initial_networks(monkeypatch)
    cfg = make_config(
        "experiment=polarity_fashion_mnist",
        "dataset=digits",
        "dataset.n_train=50",
        "dataset.n_val=150",
        "debug=fast",
        "task.num_seeds=2",
        "polarity.source.dataset.n_train=100",
    )
    run_task(cfg, tmp_path / "run")
    for seed in (0, 1):
        fluid, freeze = captured[f"fluid_rand_seed{seed}"], captured[f"freeze_rand_seed{seed}"]
        in_pol, fluid_in_pol = captured[f"freeze_in_pol_seed{seed}"], captured[f"fluid_in_pol_seed{seed}"]
        for name in fluid:
            assert torch.equal(fluid[name], freeze[name]), name
            assert torch.equal(in_pol[name], fluid_in_pol[name]), name
            assert torch.equal(in_pol[name].abs(), fluid[name].abs()), name  # IN-Pol: the same fresh magnitudes
        assert torch.equal(captured[f"in_weight_seed{seed}"]["head.weight"], fluid["head.weight"])
        assert torch.equal(
            captured[f"freeze_in_weight_seed{seed}"]["features.0.weight"], captured[f"in_weight_seed{seed}"]["features.0.weight"]
        )
    assert not torch.equal(captured["fluid_rand_seed0"]["features.0.weight"], captured["fluid_rand_seed1"]["features.0.weight"])


def test_the_transfer_target_draws_from_the_half_the_source_never_saw(make_config, data_dir: Path) -> None:
    """Composed config of the experiment AND the images each data module really uses."""
    import numpy as np
    from hydra.utils import instantiate

    from experiments.tasks.polarity.task import source_dataset_config

    cfg = make_config("experiment=polarity_fashion_mnist", "dataset.n_train=2000", "polarity.source.dataset.n_train=2000")
    source_cfg = source_dataset_config(cfg)
    target_pool, source_pool = list(cfg.dataset.pool), list(source_cfg.pool)
    assert max(target_pool[0], source_pool[0]) >= min(target_pool[1], source_pool[1])  # disjoint ranges
    target, source = instantiate(cfg.dataset, subset_seed=0), instantiate(source_cfg, subset_seed=0)
    target.setup("fit"), source.setup("fit")
    target_rows, source_rows = target.prepared.train_rows, source.prepared.train_rows  # rows of the official split
    assert len(np.intersect1d(target_rows, source_rows)) == 0
    assert len(target_rows) == 2000 and len(source_rows) == 2000
    assert set(source.prepared.train_labels[source.prepared.train_idx].tolist()) == {0, 1, 2, 3, 4}


def test_overlapping_source_and_target_pools_are_refused(make_config, tmp_path: Path, capsys) -> None:
    cfg = make_config("experiment=polarity_fashion_mnist", "dataset=digits", "dataset.pool=[0.0,1.0]", "debug=fast")
    with pytest.raises(SystemExit):
        run_task(cfg, tmp_path / "run")
    assert "overlaps polarity.source.dataset.pool" in capsys.readouterr().err
