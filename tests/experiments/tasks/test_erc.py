"""The ERC task end to end, in-process: every experiment's smoke run, the metrics.json keys, epoch
choice, condition overrides, bad input, and CMATH beating chance on planted-signal data."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from common.errors import UserError
from experiments.core.runner import run_task
from experiments.tasks.erc.task import condition_models, select_epoch
from tests.conftest import experiments_of_task
from tests.data.test_conversations import feature_tuple

EXPERIMENTS = experiments_of_task("erc")
KEYS = (
    "test_weighted_f1_median",
    "test_weighted_f1_q25",
    "test_weighted_f1_q75",
    "test_accuracy_median",
    "test_accuracy_q25",
    "test_accuracy_q75",
    "test_macro_f1_median",
    "test_macro_f1_q25",
    "test_macro_f1_q75",
    "val_weighted_f1_median",
    "test_weighted_f1_max_epoch_median",
)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the task sets task.num_threads


@pytest.fixture
def feature_pickles(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, layout in (("erc_cmath_iemocap", "sdt_iemocap"), ("erc_cmath_meld", "sdt_meld")):
        paths[name] = tmp_path / f"{layout}.pkl"
        with open(paths[name], "wb") as handle:
            pickle.dump(feature_tuple(layout, one_hot=layout.endswith("meld")), handle)
    return paths


def test_every_experiment_is_found():
    assert {
        "erc_cmath_iemocap_text",
        "erc_cmath_meld_text",
        "erc_cmath_iemocap",
        "erc_cmath_meld",
        "erc_cmath_iemocap_ablation",
        "erc_cmath_modality_quality",
        "erc_cmath_mosi",
    } <= set(EXPERIMENTS)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_of_every_experiment(experiment, make_config, data_dir, feature_pickles, tmp_path):
    extra = (
        [f"dataset.corpus.path={feature_pickles[experiment]}", "dataset.corpus.num_speakers=3"]
        if experiment in feature_pickles
        else []
    )
    if experiment == "erc_cmath_meld":
        extra += ["dataset.corpus.label_names=[a,b,c,d,e,f]"]
    cfg = make_config(f"experiment={experiment}", "debug=fast", *extra)
    run_task(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    conditions = [c for c, spec in cfg.erc.conditions.items() if spec is not None]
    assert {k.split("/")[0] for k in metrics} == set(conditions)
    for condition in conditions:
        for key in KEYS:
            assert 0.0 <= metrics[f"{condition}/{key}"] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert len(records) == len(conditions) * 2  # debug=fast: task.limit = 2 seeds
    assert {(r["condition"], r["seed"]) for r in records} == {(c, s) for c in conditions for s in (0, 1)}
    assert "max-epoch" in (tmp_path / "run" / "results.md").read_text()


def test_select_epoch_uses_validation_only():
    history = [
        {"epoch": 0, "val_weighted_f1": 0.5, "test_weighted_f1": 0.9, "test_accuracy": 0.9},
        {"epoch": 1, "val_weighted_f1": 0.7, "test_weighted_f1": 0.6, "test_accuracy": 0.6},
        {"epoch": 2, "val_weighted_f1": 0.7, "test_weighted_f1": 0.5, "test_accuracy": 0.5},
    ]
    row = select_epoch(history, "val_weighted_f1")
    assert row["best_epoch"] == 1 and row["test_weighted_f1"] == 0.6  # earliest of the tied best
    assert row["test_weighted_f1_max_epoch"] == 0.9
    with pytest.raises(UserError, match="task.select_on"):
        select_epoch(history, "val_nope")


def test_condition_overrides_make_ablations(make_config):
    cfg = make_config("experiment=erc_cmath_iemocap_ablation")
    models = condition_models(cfg)
    assert models["cmath_no_recon"].network.reconstruction is False and models["cmath"].network.reconstruction is True
    assert models["bigru"].network._target_.endswith("BiGRU") and models["symmetric"].network.symmetric is True
    assert models["cmath_no_distill"].optimizer.lr == cfg.model.lr
    OmegaConf.set_struct(cfg, False)
    cfg.erc.conditions = {"x": {"model": "main", "set": {"network.nope": 1}}}
    with pytest.raises(UserError, match="network.nope"):
        condition_models(cfg)
    cfg.erc.conditions = {"x": {"model": "elsewhere"}}
    with pytest.raises(UserError, match="erc.conditions.x.model"):
        condition_models(cfg)


@pytest.mark.slow
def test_missing_feature_pickle_is_one_line(run_cli, tmp_path):
    result = run_cli("experiment=erc_cmath_iemocap", "debug=fast", f"paths.data_dir={tmp_path}")
    assert result.returncode == 2
    assert "missing data file" in result.stderr and "iemocap_multimodal_features.pkl" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cmath_beats_chance_on_planted_signal(make_config, tmp_path):
    cfg = make_config(
        "task=erc",
        "dataset=synthetic_erc",
        "logger=none",
        "callbacks=none",
        "task.num_seeds=1",
        "task.max_epochs=12",
        "model.lr=1e-3",
        "trainer.enable_progress_bar=false",
        "~erc.conditions.symmetric",
        "~erc.conditions.bigru",
    )
    run_task(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["cmath/test_accuracy_median"] > 0.6  # chance: 0.25 (4 classes)


def epoch_learning_rates(run_dir: Path, fit: str) -> list[float]:
    lines = (run_dir / "artifacts" / "history" / f"{fit}.csv").read_text().splitlines()
    column = lines[0].split(",").index("train_lr")
    return [float(line.split(",")[column]) for line in lines[1:]]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_lr_schedule_is_a_protocol_for_every_condition(make_config, tmp_path, schedule):
    cfg = make_config(
        "task=erc",
        "dataset=synthetic_erc",
        "dataset.corpus.num_dialogues=[8,4,4]",
        "logger=none",
        "callbacks=none",
        "task.num_seeds=1",
        "task.max_epochs=4",
        "trainer.enable_progress_bar=false",
        "~erc.conditions.symmetric",
        f"lr_schedule={schedule}",
    )
    run_task(cfg, tmp_path / "run")
    for fit, lr in (("cmath_seed0", cfg.model.lr), ("bigru_seed0", cfg.erc.models.bigru.lr)):
        rates = epoch_learning_rates(tmp_path / "run", fit)
        assert rates[0] == pytest.approx(lr)
        if schedule == "constant":
            assert rates == pytest.approx([lr] * 4)
        else:  # cosine over the 4 epochs of the fit: lr * (1 + cos(pi * e / 4)) / 2
            assert rates == pytest.approx([lr * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)], rel=1e-5)  # csv: 6 digits


def test_a_condition_setting_lr_reaches_its_optimizer(make_config):
    """Keys are set before the node is resolved, so `optimizer.lr: ${..lr}` follows a condition's `lr`."""
    cfg = make_config("experiment=erc_cmath_iemocap_ablation")
    OmegaConf.set_struct(cfg, False)
    cfg.erc.conditions = {"slow": {"model": "main", "set": {"lr": 1.0e-5}}, "base": {"model": "main"}}
    models = condition_models(cfg)
    assert models["slow"].optimizer.lr == 1.0e-5 and models["base"].optimizer.lr == cfg.model.lr


def test_shared_keys_set_the_protocol_of_every_condition(make_config):
    cfg = make_config("experiment=erc_cmath_iemocap", "+erc.shared.max_epochs=7")
    models = condition_models(cfg)
    assert {name: m.optimizer.lr for name, m in models.items()} == {"cmath": 1.0e-4, "symmetric": 1.0e-4, "bigru": 1.0e-4}
    assert models["cmath"].network.temperature == models["symmetric"].network.temperature == 1.0
    assert "temperature" not in models["bigru"].network  # a key a model lacks is left out, not added
    assert {m.max_epochs for m in models.values()} == {7}
    OmegaConf.set_struct(cfg, False)
    cfg.erc.shared = {"network.temprature": 2.0}
    with pytest.raises(UserError, match="erc.shared.network.temprature: no condition's model has this key"):
        condition_models(cfg)


def test_a_nested_shared_key_sets_that_key_only(make_config):
    """`+erc.shared.network.dropout=0.2` on the command line nests; it must not replace the whole network node."""
    models = condition_models(make_config("experiment=erc_cmath_iemocap", "+erc.shared.network.dropout=0.2"))
    assert {m.network.dropout for m in models.values()} == {0.2}
    assert models["symmetric"].network.symmetric is True and models["cmath"].network.central == "text"


def test_mosi_conditions_use_their_modalities_and_central_one(make_config):
    models = condition_models(make_config("experiment=erc_cmath_mosi"))
    assert models["cmath_central_audio"].network.central == "audio" and models["cmath_central_audio"].network.modalities is None
    assert list(models["cmath_av"].network.modalities) == ["audio", "video"] and models["cmath_av"].network.central == "audio"
    assert list(models["cmath_t"].network.modalities) == ["text"]
    assert models["bigru_concat"].network._target_.endswith("BiGRU") and models["bigru_concat"].network.modalities is None
    assert {m.optimizer.lr for m in models.values()} == {1.0e-3} and {m.network.hidden for m in models.values()} == {64}


@pytest.mark.slow
def test_predictions_and_macro_f1_at_the_selected_epoch(make_config, tmp_path):
    """The predictions artifact is the selected epoch's, and the recorded accuracy and macro F1 are computed
    from exactly those predictions (checked against scikit-learn)."""
    from sklearn.metrics import accuracy_score, f1_score

    cfg = make_config(
        "task=erc",
        "dataset=synthetic_erc",
        "logger=none",
        "task.num_seeds=1",
        "task.max_epochs=4",
        "trainer.enable_progress_bar=false",
        "~erc.conditions.symmetric",
        "~erc.conditions.cmath",
    )
    run_task(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "records.jsonl").read_text().splitlines()[0])
    lines = (tmp_path / "run" / "artifacts" / "predictions" / "bigru_seed0.csv").read_text().splitlines()
    assert lines[0] == "utterance_id,label,prediction"
    rows = [line.split(",") for line in lines[1:]]
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) > 0 and all(i.startswith("test_") for i in ids)  # each test utterance once
    labels, predictions = [r[1] for r in rows], [r[2] for r in rows]
    assert math.isclose(record["test_accuracy"], accuracy_score(labels, predictions), abs_tol=1e-6)
    assert math.isclose(record["test_macro_f1"], f1_score(labels, predictions, average="macro"), abs_tol=1e-5)
    assert math.isclose(record["test_weighted_f1"], f1_score(labels, predictions, average="weighted"), abs_tol=1e-5)
    assert (tmp_path / "run" / "plots" / "confusion_bigru.png").is_file()
