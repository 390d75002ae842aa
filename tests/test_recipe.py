"""Recipe errors name the file, the line and the key path; shipped recipes load."""

from __future__ import annotations

from importlib.resources import files

import pytest

from pipelines.recipe import RecipeError, load_recipe, parse_recipe

GOOD = """\
name: t
stages:
  - name: ingest
    uses: ingest
    sources:
      - kind: synthetic
        n: 10
  - name: ref
    uses: reference_traces
    inputs: [ingest]
  - name: emit
    uses: emit
    inputs: [ref, ingest]
    test_size: 0.2
"""


def error_of(text: str, tmp_path) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    return str(e.value)


def test_good_recipe_resolves_tables():
    recipe = parse_recipe(GOOD, "good.yaml")
    assert list(recipe.instances) == ["ingest", "ref", "emit"]
    assert recipe.instances["emit"].inputs == {"traces": "ref", "problems": "ingest"}
    assert recipe.instances["emit"].config.test_size == 0.2


@pytest.mark.parametrize("name", ["laptop", "math_long_cot", "code_long_cot"])
def test_shipped_recipes_load(name):
    recipe = load_recipe(files("pipelines.recipes") / f"{name}.yaml")
    assert recipe.name == name


def test_unknown_stage_key_names_file_line_and_path(tmp_path):
    message = error_of(GOOD.replace("test_size: 0.2", "test_sise: 0.2"), tmp_path)
    assert f"{tmp_path / 'recipe.yaml'}:14: stages[2].test_sise: unknown key" in message


def test_wrong_type_names_key_and_expectation(tmp_path):
    message = error_of(GOOD.replace("n: 10", "n: ten"), tmp_path)
    assert "recipe.yaml:7: stages[0].sources[0].n:" in message
    assert "valid integer" in message and "'ten'" in message


def test_nested_source_key(tmp_path):
    message = error_of(GOOD.replace("kind: synthetic", "kind: synthetic\n        famlies: [x]"), tmp_path)
    assert "recipe.yaml:7: stages[0].sources[0].famlies: unknown key" in message


def test_unknown_top_level_key(tmp_path):
    message = error_of("nme: x\n" + GOOD, tmp_path)
    assert "recipe.yaml:1: nme: unknown key" in message


def test_unknown_stage_type_lists_known_ones(tmp_path):
    message = error_of(GOOD.replace("uses: reference_traces", "uses: refrence"), tmp_path)
    assert "recipe.yaml:9: stages[1].uses: unknown stage type 'refrence'" in message
    assert "reference_traces" in message


def test_unknown_input(tmp_path):
    message = error_of(GOOD.replace("inputs: [ref, ingest]", "inputs: [reff, ingest]"), tmp_path)
    assert "stages[2].inputs[0]: unknown input 'reff'" in message


def test_missing_table_input(tmp_path):
    message = error_of(GOOD.replace("inputs: [ref, ingest]", "inputs: [ref]"), tmp_path)
    assert "stages[2].inputs: 'emit' reads the problems table" in message


def test_duplicate_stage_name(tmp_path):
    message = error_of(GOOD.replace("name: ref\n", "name: ingest\n").replace("[ref, ingest]", "[ingest]"),
                       tmp_path)
    assert "recipe.yaml:8: stages[1].name: duplicate stage name 'ingest'" in message


def test_yaml_syntax_error_has_line(tmp_path):
    message = error_of(GOOD.replace("test_size: 0.2", "test_size: [0.2"), tmp_path)
    assert "recipe.yaml:" in message and "not valid YAML" in message


def test_missing_file_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="cannot read the recipe"):
        load_recipe(tmp_path / "nope.yaml")
