"""The config contract: schema <- YAML <- key=value, and every bad value fails before work starts."""

from pathlib import Path

import pytest

from asr.cli import main
from asr.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.model.d_model % cfg.model.num_heads == 0


def test_yaml_then_overrides_win():
    cfg = load_config(CONFIGS[0], ["optim.lr=0.5", "model.num_layers=2", "data.dev_splits=[a,b]"])
    assert cfg.optim.lr == 0.5
    assert cfg.model.num_layers == 2
    assert list(cfg.data.dev_splits) == ["a", "b"]


def test_resolved_config_is_read_only():
    cfg = load_config(None)
    with pytest.raises(Exception):  # noqa: B017 - omegaconf's ReadonlyConfigError
        cfg.optim.lr = 1.0


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("optim.learning_rate=1", ["optim.learning_rate", "optim.lr"]),
        ("model.d_modle=64", ["model.d_modle", "model.d_model"]),
        ("trian.seed=1", ["trian.seed", "train.seed"]),
    ],
)
def test_unknown_key_names_it_and_the_closest_valid_keys(override, names):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for name in names:
        assert name in str(err.value)


def test_unknown_key_in_yaml_names_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 0.1\n  beta: [0.9, 0.99]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "bad.yaml" in str(err.value) and "optim.beta" in str(err.value)
    assert "optim.betas" in str(err.value)


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("optim.lr=abc", "optim.lr", "abc"),
        ("optim.lr=-1", "optim.lr", "positive"),
        ("ema.rho=1.5", "ema.rho", "(0, 1)"),
        ("ema.rho=0", "ema.rho", "(0, 1)"),
        ("data.max_batch_seconds=-5", "data.max_batch_seconds", "positive"),
        ("data.max_duration=500", "data.max_duration", "max_batch_seconds"),
        ("optim.betas=[0.9,1.0]", "optim.betas", "[0, 1)"),
        ("optim.name=lamb", "optim.name", "sgd, adam, adamw, adagrad"),
        ("model.num_heads=5", "model.d_model", "multiple of model.num_heads"),
        ("model.dropout=1.0", "model.dropout", "[0, 1)"),
        ("schedule.warmup_hours=1000", "schedule.warmup_hours", "total_hours"),
        ("scaling.reference_seconds=0", "scaling.reference_seconds", "positive"),
        ("scaling.ema_rule=sqrt", "scaling.ema_rule", "power, none"),
        ("train.accum_steps=0", "train.accum_steps", "positive"),
        ("specaug.policy=XL", "specaug.policy", "LB, LD"),
        ("pl.min_tokens=0", "pl.min_tokens", ">= 1"),
        ("data.speed_perturb=[1.0,1.0]", "data.speed_perturb", "distinct speed factors"),
        ("data.speed_perturb=[0.1,1.0]", "data.speed_perturb", "[0.5, 2]"),
    ],
)
def test_impossible_value_names_key_value_and_what_is_allowed(override, key, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert key in message and expected in message


def test_progressive_stages_must_start_at_zero_and_increase():
    with pytest.raises(ConfigError, match=r"scaling\.progressive"):
        load_config(None, ["scaling.progressive=[{hours: 1, accum_steps: 2}]"])
    cfg = load_config(None, ["scaling.progressive=[{hours: 0, accum_steps: 1}, {hours: 2, accum_steps: 4}]"])
    assert [s.accum_steps for s in cfg.scaling.progressive] == [1, 4]


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_config_command_prints_resolved_yaml(capsys):
    assert main(["config", "--config", str(CONFIGS[0]), "optim.lr=0.25"]) == 0
    assert "lr: 0.25" in capsys.readouterr().out


def test_config_command_reports_bad_key_and_exits_nonzero(capsys):
    assert main(["config", "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err
