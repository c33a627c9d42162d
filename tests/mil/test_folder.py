"""The fold folder: what is written is read back (metrics, predictions, the rebuilt model's outputs),
completeness is the presence of metrics.json, and a teacher checkpoint is checked before it is loaded."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from pipeline import layout
from pipeline.errors import PipelineError
from pipeline.mil.folder import FoldFolder
from pipeline.mil.models import create_mil_model
from pipeline.settings import mil_settings


def _write(path, method="abmil", fold=0, in_dim=6, n_outputs=2):
    torch.manual_seed(0)
    settings = mil_settings(None, ["hidden_dim=8", "attention_dim=4"])
    model = create_mil_model(method, in_dim, n_outputs, settings).eval()
    meta = {
        "method": method,
        "in_dim": in_dim,
        "n_outputs": n_outputs,
        "cfg": settings.to_dict(),
        "fold": fold,
    }
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.7, 0.5]})
    predictions = pd.DataFrame(
        {"slide_id": ["a", "b"], "role": ["test", "val"], "score_1": [0.25, 0.75]}
    )
    metrics = {"method": method, "fold": fold, "test": {"auc": 0.5}}
    folder = FoldFolder(path)
    folder.write(model, meta, history, predictions, metrics)
    return folder, model, predictions, metrics


def test_round_trip(tmp_path):
    assert not FoldFolder(tmp_path / "fold0").complete
    folder, model, predictions, metrics = _write(tmp_path / "fold0")
    assert folder.complete
    assert sorted(p.name for p in folder.path.iterdir()) == sorted(layout.FOLD_FILES.values())
    assert folder.metrics() == metrics
    pd.testing.assert_frame_equal(folder.predictions(), predictions)
    rebuilt, meta = folder.load_model("cpu")
    assert meta.method == "abmil" and not rebuilt.training
    x = torch.randn(5, 6)
    torch.testing.assert_close(rebuilt(x)["logits"], model(x)["logits"], rtol=0, atol=0)
    saved = json.loads(folder.file("model_json").read_text())
    assert saved["cfg"]["attention_dim"] == 4  # the model key is recorded to rebuild the model


def test_a_rewrite_is_incomplete_until_metrics_are_written(tmp_path, monkeypatch):
    folder, *_ = _write(tmp_path / "fold0")
    from pipeline.mil import folder as folder_module

    real = folder_module.write_json

    def die_on_metrics(path, data):
        if str(path).endswith(layout.METRICS):
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(folder_module, "write_json", die_on_metrics)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "fold0")
    assert not folder.complete
    with pytest.raises(PipelineError, match="this fold has not finished training"):
        folder.metrics()


def test_teacher_state_checks_method_fold_and_shape(tmp_path):
    folder, model, *_ = _write(tmp_path / "base", fold=1)
    state = folder.teacher_state("mhim_abmil", "abmil", 1, 6, 2)
    assert state.keys() == model.state_dict().keys()
    with pytest.raises(PipelineError, match="it is a abmil model, mhim_dsmil needs dsmil"):
        folder.teacher_state("mhim_dsmil", "dsmil", 1, 6, 2)
    with pytest.raises(PipelineError, match="trained on fold 1, this is fold 0"):
        folder.teacher_state("mhim_abmil", "abmil", 0, 6, 2)
    with pytest.raises(PipelineError, match="in_dim 6 / 2 outputs, this run 7 / 2"):
        folder.teacher_state("mhim_abmil", "abmil", 1, 7, 2)
    with pytest.raises(PipelineError, match="teacher checkpoint not found"):
        FoldFolder(tmp_path / "nothing").teacher_state("mhim_abmil", "abmil", 1, 6, 2)
    with pytest.raises(PipelineError, match="no trained model here"):
        FoldFolder(tmp_path / "nothing").load_model()
