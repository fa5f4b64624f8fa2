"""The configuration is declared once (swag_lora/config/schema.py): docs/configuration.md's table is generated from it, and every
YAML file holds exactly the declared keys."""
import re

import pytest
from conftest import REPO, compose

from swag_lora.config.docs import markdown_table
from swag_lora.config import (CONF, DataOverrides, EvaluationConfig, ExperimentConfig, ModelConfig, _build,
                              parse_run)


def test_the_configuration_table_is_the_generated_one():
    doc = (REPO / "docs" / "configuration.md").read_text()
    block = re.search(r"<!-- config-table:[^>]*-->\n(.*?)\n<!-- /config-table -->", doc, re.S)
    assert block, "docs/configuration.md has no generated config table"
    assert block.group(1).strip() == markdown_table().strip(), "docs/configuration.md is out of date: python -m swag_lora.config"


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_every_model_yaml_holds_the_declared_keys(model):
    run = parse_run(compose(f"model={model}", "method=swag"))      # unknown or missing keys are errors
    assert isinstance(run.model, ModelConfig) and run.model.name == model


@pytest.mark.parametrize("method", sorted(p.stem for p in (CONF / "method").glob("*.yaml")))
def test_every_method_yaml_holds_the_declared_keys(method):
    run = parse_run(compose(f"method={method}"))
    assert run.method.method_name == {"swag_demo": "swag"}.get(method, method)


def test_eval_yaml_holds_the_declared_keys():
    from omegaconf import OmegaConf
    cfg = OmegaConf.to_container(compose(config_name="eval"), resolve=True)
    assert isinstance(_build(EvaluationConfig, cfg["evaluation"], "evaluation"), EvaluationConfig)
    assert isinstance(_build(DataOverrides, cfg["experiment"], "experiment"), DataOverrides)
    assert set(compose().experiment) == {f for f in ExperimentConfig.__dataclass_fields__}
