"""`cqil.recovery.save`: where the recovered adapters (or the merged model) of each recovered setting
go in the run dir, and that `none` writes nothing."""

from __future__ import annotations

import json

import pytest

import experiments.tasks.cqil.task as task
from experiments.core.run_context import RunContext
from tests.experiments.tasks.cqil.tiny_task import tiny_task_config

ONLY_RECOVERY = (
    "cqil.settings=[]",
    "cqil.removal=false",
    "cqil.rule.enabled=false",
    "cqil.latency.enabled=false",
    "cqil.recovery.enabled=true",
)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["merged", "none"])  # adapters: test_bypass_residual.py
def test_each_recovered_setting_is_saved_as_configured(make_config, tmp_path, how) -> None:
    cfg = tiny_task_config(make_config, tmp_path, *ONLY_RECOVERY, f"cqil.recovery.save={how}")
    result = task.run(cfg, RunContext(cfg, tmp_path / "run"))
    saved = {r["setting"]: r.get("saved") for r in result.records}
    assert set(saved) == {"original", "cqil_p2_s0_e4_d1_lora", "removed_2_lora"}
    folder = tmp_path / "run/artifacts/recovered"
    if how == "none":
        assert not folder.exists() and set(saved.values()) == {None}
        return
    suffix = "_merged" if how == "merged" else ""
    want_file = "config.json" if how == "merged" else "adapter_config.json"
    for setting in ("cqil_p2_s0_e4_d1_lora", "removed_2_lora"):
        assert saved[setting] == f"artifacts/recovered/{setting}{suffix}"
        assert (tmp_path / "run" / saved[setting] / want_file).is_file()
    assert sorted(p.name for p in folder.iterdir()) == [f"cqil_p2_s0_e4_d1_lora{suffix}", f"removed_2_lora{suffix}"]
    layout = json.loads((folder / f"removed_2_lora{suffix}/cqil_layout.json").read_text())
    assert len(layout["removed_layers"]) == 2
