"""Bad input gives slimkit errors naming the key, the value and what is allowed."""

from __future__ import annotations

import pytest
import torch
from kd_helpers import fresh_state
from slimkit_kd import KDConfig, KDDistiller

from slimkit import ArtifactError, ConfigError
from slimkit.models import tiny_model


@pytest.mark.parametrize("key,value", [("temperature", 0.0), ("temperature", -1.0), ("alpha", 1.5), ("alpha", -0.1),
                                       ("student_layers", "every_third"), ("student_layers", [2, 1]),
                                       ("student_layers", []), ("layer_map", [[0]]), ("qat_bits", 3),
                                       ("student_from", "nowhere"), ("max_steps", -1), ("hidden_weight", -1.0),
                                       ("recovery_lr", 0.0), ("recovery_lr", -1e-4)])
def test_bad_config_values(key, value):
    with pytest.raises(ConfigError) as info:
        KDConfig(**{key: value})
    assert f"distiller.{key}" in str(info.value) and repr(value) in str(info.value)


def test_early_stopping_needs_validation():
    with pytest.raises(ConfigError, match=r"distiller.patience=2 .*eval_every"):
        KDConfig(patience=2, eval_every=0)
    with pytest.raises(ConfigError, match=r"distiller.patience=2 .*val_fraction"):
        KDConfig(patience=2, val_fraction=0.0)


def test_teacher_path_must_be_a_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="distiller.teacher_path"):
        KDDistiller(KDConfig(teacher_path=str(tmp_path / "nope"))).check_before_load({})


def test_teacher_with_another_vocabulary(tmp_path):
    tiny_model(0, vocab_size=256).save_pretrained(tmp_path)
    stage = KDDistiller(KDConfig(teacher_path=str(tmp_path), max_steps=1))
    stage.check_before_load({})
    with pytest.raises(ConfigError, match=r"distiller.teacher_path.*512 tokens.*vocab_size is 256"):
        stage.apply(fresh_state())


def test_teacher_from_a_folder(tmp_path):
    state = fresh_state()
    state.reference.save_pretrained(tmp_path)
    state.tokenizer.save_pretrained(tmp_path)
    metrics = KDDistiller(KDConfig(teacher_path=str(tmp_path), max_steps=2, eval_every=0, alpha=1.0)).apply(state)
    assert metrics["steps"] == 2 and metrics["first_loss"] < 1e-4  # student == teacher at step 0


def test_student_layer_out_of_range():
    with pytest.raises(ConfigError, match=r"distiller.student_layers.*\[0, 3\]"):
        KDDistiller(KDConfig(student_layers=[0, 7], max_steps=1)).apply(fresh_state())


def test_hidden_mse_needs_a_layer_map_for_other_depths():
    stage = KDDistiller(KDConfig(student_layers=[0, 1], student_from="model", hidden_weight=1.0, max_steps=1,
                                 layer_map=[[0, 1], [1, 9]]))
    with pytest.raises(ConfigError, match="distiller.layer_map"):
        stage.apply(fresh_state())


def test_qat_bits_must_match_a_following_quanto_quantizer():
    with pytest.raises(ConfigError, match=r"distiller.qat_bits=4.*quantizer.bits=8"):
        KDDistiller(KDConfig(qat_bits=4)).check_before_load({"quantizer": {"backend": "quanto", "bits": 8}})
    KDDistiller(KDConfig(qat_bits=4)).check_before_load({"quantizer": {"backend": "quanto", "bits": 4}})


def test_resume_needs_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match="distiller.resume"):
        KDDistiller(KDConfig(resume=True)).check_before_load({})
    state = fresh_state()
    state.work_dir = tmp_path
    with pytest.raises(ArtifactError, match="no complete checkpoint"):
        KDDistiller(KDConfig(resume=True, checkpoint_every=2, max_steps=2)).apply(state)


def test_resume_from_another_models_checkpoint(tmp_path):
    state = fresh_state(0)
    state.work_dir = tmp_path
    KDDistiller(KDConfig(max_steps=2, checkpoint_every=2, eval_every=0)).apply(state)
    other = fresh_state(seed=1)  # same shapes, different weights
    other.work_dir = tmp_path
    with pytest.raises(ConfigError, match=r"distiller.resume.*differs in student"):
        KDDistiller(KDConfig(max_steps=4, checkpoint_every=2, eval_every=0, resume=True)).apply(other)
    changed = fresh_state(0)
    changed.work_dir = tmp_path
    with pytest.raises(ConfigError, match=r"differs in distiller"):
        KDDistiller(KDConfig(max_steps=4, checkpoint_every=2, eval_every=0, resume=True, temperature=3.0)).apply(changed)


def test_partial_checkpoint_is_ignored(tmp_path):
    state = fresh_state()
    state.work_dir = tmp_path
    KDDistiller(KDConfig(max_steps=2, checkpoint_every=1, eval_every=0)).apply(state)
    # an interrupted write leaves a hidden partial folder without trainer.json: never picked
    (tmp_path / "checkpoints" / ".step-0000009.partial-x").mkdir()
    (tmp_path / "checkpoints" / "step-0000009").mkdir()
    resumed = fresh_state()
    resumed.work_dir = tmp_path
    metrics = KDDistiller(KDConfig(max_steps=3, checkpoint_every=1, eval_every=0, resume=True)).apply(resumed)
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 3
    assert torch.isfinite(resumed.model.model.layers[0].mlp.up_proj.weight).all()


def test_qat_on_the_quantizer_grid_needs_a_quantizer_that_offers_it():
    with pytest.raises(ConfigError, match=r"distiller.qat_grid='quantizer'.*'quanto'"):
        KDDistiller(KDConfig(qat_bits=4, qat_grid="quantizer")).check_before_load(
            {"quantizer": {"backend": "quanto", "bits": 4}})
    with pytest.raises(ConfigError, match=r"distiller.qat_grid='quantizer'.*'none'"):
        KDDistiller(KDConfig(qat_bits=4, qat_grid="quantizer")).check_before_load({})


def test_qat_bits_must_match_a_quantizer_whose_grid_is_simulated():
    pytest.importorskip("auto_round")
    with pytest.raises(ConfigError, match=r"distiller.qat_bits=4.*autoround quantizer.*quantizer.bits=8"):
        KDDistiller(KDConfig(qat_bits=4)).check_before_load({"quantizer": {"backend": "autoround", "bits": 8}})
    KDDistiller(KDConfig(qat_bits=4)).check_before_load({"quantizer": {"backend": "autoround", "bits": 4}})
