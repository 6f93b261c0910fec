import pytest

from dreamteacher.config import (
    FinetuneConfig,
    PretrainConfig,
    TeacherConfig,
    build_config,
    parse_overrides,
)
from dreamteacher.errors import UserError


def test_precedence_defaults_file_kwargs_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.01\nepochs: 3\nbackbone: resnet18\n")
    cfg = build_config(PretrainConfig, f, ["epochs=7", "t=[50,150]"], backbone="convnext_tiny")
    assert cfg.lr == 0.01 and cfg.epochs == 7 and cfg.backbone == "convnext_tiny"
    assert cfg.t == [50, 150] and cfg.weight_decay == 0.05


def test_scalar_becomes_list_and_square_size():
    cfg = build_config(TeacherConfig, None, ["image_size=48"])
    assert cfg.image_size == [48, 48]
    assert build_config(PretrainConfig, None, ["t=250"]).t == [250]


def test_unknown_key_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="unknown config key 'lrr'.*valid keys"):
        build_config(PretrainConfig, None, ["lrr=1"])
    f = tmp_path / "bad.yaml"
    f.write_text("stepz: 3\n")
    with pytest.raises(UserError, match=r"unknown config key 'stepz' in .*bad\.yaml"):
        build_config(TeacherConfig, f)


def test_wrong_type_is_a_clear_error():
    with pytest.raises(UserError, match="'steps' must be int"):
        build_config(FinetuneConfig, None, ["steps=abc"])


def test_override_syntax():
    assert parse_overrides(["a=1e-3", "b=true", "c=x"]) == {"a": 1e-3, "b": True, "c": "x"}
    with pytest.raises(UserError, match="not key=value"):
        parse_overrides(["oops"])
