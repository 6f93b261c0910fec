import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamteacher import config as C
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
    paths = {"data": "imgs", "teacher": "runs/t", "out": "runs/p"}
    cfg = build_config(
        PretrainConfig, f, ["epochs=7", "t=[50,150]"], backbone="convnext_tiny", **paths
    )
    assert cfg.lr == 0.01 and cfg.epochs == 7 and cfg.backbone == "convnext_tiny"
    assert cfg.t == [50, 150] and cfg.weight_decay == 0.05


def test_scalar_becomes_list_and_square_size():
    paths = {"data": "imgs", "teacher": "runs/t", "out": "runs/p"}
    cfg = build_config(TeacherConfig, None, ["image_size=48"], data="imgs", out="runs/t")
    assert cfg.image_size == [48, 48]
    assert build_config(PretrainConfig, None, ["t=250"], **paths).t == [250]


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


CONFIGS = [
    C.TeacherConfig,
    C.PretrainConfig,
    C.FinetuneConfig,
    C.InterpreterConfig,
    C.DDPMSegConfig,
    C.CacheConfig,
    C.BaselineConfig,
]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.one_of(st.integers(-5, 5), st.floats(-2, 2)), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(cls=st.sampled_from(CONFIGS), picks=st.data())
def test_fuzzed_config_values_are_accepted_valid_or_refused_in_one_line(cls, picks):
    """Random values for random keys: the config is built and every number in it is finite and
    in its range, or a one-line UserError names the key."""
    keys = [f.name for f in dataclasses.fields(cls)]
    chosen = picks.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True))
    values = {k: picks.draw(VALUES) for k in chosen}
    base = {"data": "in", "out": "out", "teacher": "t"}
    try:
        cfg = C.build_config(cls, overrides={**base, **values})
    except UserError as e:
        assert "\n" not in str(e) and any(f"'{k}'" in str(e) or k in str(e) for k in chosen)
        return
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                assert math.isfinite(v)
                if f.name not in C.NON_NEGATIVE | C.FRACTIONS | set(C.AT_LEAST):
                    assert v > 0, (f.name, v)
