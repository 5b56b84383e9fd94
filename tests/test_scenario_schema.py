"""The scenario file's schema (workbench/scenario/schema.py): the JSON Schema that
`workbench schema scenario` prints accepts every example and refuses what the reader
refuses; the schema cannot drift from GenerationParams or the chains' arguments; and
the reader's messages say what the file holds (.inf, a NUL, an ESC), where."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from bagel.errors import InputError
from workbench import chains
from workbench.cli.main import main
from workbench.params import MAX_TEXT_CHARS, GenerationParams
from workbench.scenario.read import ScenarioError, load_scenario
from workbench.scenario.run import run_scenario
from workbench.scenario.schema import CHAIN_ARGS, Defaults, Params, ScenarioFile
from workbench.server import create_app
from workbench.session import Session

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "scenarios").rglob("*.yaml"))
BASE = "start: {image: pic.png}\nsteps:\n  - predict: {frames: 1}\n"


def printed_schema(capsys) -> dict:
    assert main(["schema", "scenario"]) == 0
    return json.loads(capsys.readouterr().out)


def write(folder: Path, text: str, name: str = "s.yaml") -> Path:
    Image.new("RGB", (32, 32)).save(folder / "pic.png")
    path = folder / name
    path.write_text(text)
    return path


# -- the JSON Schema ------------------------------------------------------------------


def test_the_printed_schema_takes_every_example_and_refuses_unknown_keys(capsys):
    schema = printed_schema(capsys)
    jsonschema.Draft202012Validator.check_schema(schema)
    check = jsonschema.Draft202012Validator(schema)
    assert len(EXAMPLES) >= 10  # scenarios/ and scenarios/world/
    for path in EXAMPLES:
        document = yaml.safe_load(path.read_text())
        assert not list(check.iter_errors(document)), path
    street = yaml.safe_load((ROOT / "scenarios" / "street_navigation.yaml").read_text())
    for edit in (
        lambda d: d.update(defualts={}),  # a typo at the top
        lambda d: d["defaults"].update(num_timestep=6),  # in the generation settings
        lambda d: d["steps"][0]["navigate"].update(jump=1),  # in a chain's arguments
        lambda d: d["steps"].append({"fly": {}}),  # an unknown chain
        lambda d: d["steps"][0]["navigate"]["actions"].append("jump"),  # an unknown action
        lambda d: d["defaults"].update(num_timesteps=1),  # out of range
        lambda d: d["defaults"].update(num_timesteps="6"),  # a string for a number
    ):
        document = json.loads(json.dumps(street))
        edit(document)
        assert list(check.iter_errors(document)), document


def test_the_schema_holds_the_ranges_and_choices_the_reader_checks():
    schema = ScenarioFile.model_json_schema()
    params = schema["$defs"]["Params"]["properties"]
    assert params["num_timesteps"]["minimum"] == 2 and params["num_timesteps"]["maximum"] == 1000
    assert params["cfg_renorm_type"]["enum"] == ["global", "channel", "text_channel"]
    assert params["timestep_shift"]["exclusiveMinimum"] == 0
    rotate = schema["$defs"]["RotateArgs"]["properties"]
    assert rotate["axis"]["enum"] == list(chains.AXES)
    assert schema["properties"]["name"]["maxLength"] == MAX_TEXT_CHARS


def test_the_schema_follows_generation_params_and_the_chains():
    """A field added to GenerationParams or an argument added to a chain must appear in
    the schema (and the other way round)."""
    fields = {f.name for f in dataclasses.fields(GenerationParams)}
    assert set(Params.model_fields) == fields
    assert set(Defaults.model_fields) == fields - {"seed"}  # the top-level seed sets it
    for chain, keys in CHAIN_ARGS.items():
        taken = set(inspect.signature(getattr(chains, chain)).parameters)
        assert set(keys) == taken - {"session", "params", "progress", "on_turn"}, chain


# -- messages -------------------------------------------------------------------------


def refused(path: Path) -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    return caught.value


@pytest.mark.parametrize(
    ("added", "line", "field", "words"),
    [
        ("defaults:\n  timestep_shift: .inf\n", 5, "defaults.timestep_shift", "got .inf"),
        ("defaults: {cfg_text_scale: -.Inf}\n", 4, "defaults.cfg_text_scale", "got -.Inf"),
        ("seed: true\n", 4, "seed", "expected an integer, got True (bool)"),
        ("seed: '5'\n", 4, "seed", "expected an integer, got '5' (str)"),
        (f"defaults: {{cfg_img_scale: {10**400}}}\n", 4, "defaults.cfg_img_scale", "401 digits"),
        ("defaults: {height: 64}\n", 4, "defaults.height", "height and width must be given"),
        ("export: {formats: [png, png]}\n", 4, "export.formats[1]", "'png' is listed twice"),
        ("name: '  '\n", 4, "name", "must hold a non-space character, got '  '"),
    ],
)
def test_messages_say_what_the_file_holds(tmp_path, added, line, field, words):
    err = refused(write(tmp_path, BASE + added))
    assert (err.line, err.field) == (line, field), str(err)
    assert words in str(err), str(err)


def test_scalars_yaml_cannot_read_are_scenario_errors(tmp_path):
    """PyYAML's constructors raise ValueError for these (not a YAMLError)."""
    for added, words in (
        ("name: 2001-13-45\n", "cannot read '2001-13-45' as a YAML timestamp (month must"),
        ("seed: !!int ''\n", "cannot read '' as a YAML int; quote it for a text"),
        (f"seed: {'9' * 5000}\n", "seed: a number of 5000 digits, more than can be read"),
        (f"? {'9' * 5000}\n: 1\n", "a number of 5000 digits"),  # as a key
    ):
        err = refused(write(tmp_path, BASE + added))
        assert err.line == 4 and words in str(err), str(err)


def test_a_nul_character_is_a_scenario_error_at_its_line(tmp_path):
    err = refused(write(tmp_path, BASE + "name: a\x00b\n"))
    assert (err.line, err.field) == (4, "yaml")
    assert "the character '\\x00' (U+0000)" in str(err) and "\x00" not in str(err)


def test_control_characters_are_shown_escaped(tmp_path):
    for text, field in (
        (BASE + 'defaults: {"\\e[2Jx": 1}\n', "defaults.\x1b[2Jx"),  # an unknown key
        (BASE + 'dtype: "\\e[2J"\n', "dtype"),  # an unknown value
        (BASE.replace("{image: pic.png}", '{image: "\\e.png"}'), "start.image"),  # a path
    ):
        err = refused(write(tmp_path, text))
        assert err.field == field, str(err)
        assert "\x1b" not in str(err) and "\\x1b" in str(err), str(err)


def test_texts_are_bounded(tmp_path):
    longest = "a" * MAX_TEXT_CHARS
    assert load_scenario(write(tmp_path, BASE + f"name: {longest}\n")).name == longest
    err = refused(write(tmp_path, BASE + f"name: {longest}b\n"))
    words = f"is {MAX_TEXT_CHARS + 1} characters long; at most {MAX_TEXT_CHARS} are allowed"
    assert err.field == "name" and words in str(err)


def test_a_too_large_file_says_how_large(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(BASE + "#" * (3 * 2**20))
    assert "the scenario file is 3.0 MiB; scenario files are limited to 1 MiB" in str(refused(path))


# -- templates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{degrees:>10000000}", "width or precision over 100"),
        ("{degrees:.101}", "width or precision over 100"),
        ("{degrees:>" + "9" * 5000 + "}", "width or precision over 100"),
        ("{degrees:{axis}}", "may not hold a placeholder"),
        ("{degrees.real}", "unknown placeholder(s) ['degrees.real']"),
        ("{0}", "unknown placeholder(s) ['0']"),
        ("turn it", "must contain {degrees}"),
        ("{degrees:d}", "not a valid template"),
    ],
)
def test_templates_are_checked_in_the_file_and_by_the_chain(tmp_path, pipe, template, words):
    step = f"rotate: {{degrees: 5, steps: 1, template: {json.dumps(template)}}}"
    err = refused(write(tmp_path, BASE.replace("predict: {frames: 1}", step)))
    assert err.field == "steps[0].rotate.template" and words in str(err), str(err)
    session = Session(pipe)
    with pytest.raises(InputError, match="template") as caught:
        chains.rotate(session, 5, 1, template=template)
    assert words in str(caught.value) and not session.turns


def test_a_bounded_template_is_taken(tmp_path):
    step = "rotate: {degrees: 5, steps: 1, template: 'turn {degrees:>100} about {axis}'}"
    scenario = load_scenario(write(tmp_path, BASE.replace("predict: {frames: 1}", step)))
    assert scenario.steps[0].args["template"] == "turn {degrees:>100} about {axis}"


# -- blank texts ----------------------------------------------------------------------


def test_a_blank_prompt_makes_an_image_from_an_empty_text(tmp_path, pipe):
    """As the official recipe asks for an unconditional image: one framed empty text."""
    text = (
        "defaults: {num_timesteps: 2, height: 32, width: 32}\n"
        'start: {prompt: ""}\n'
        "steps:\n  - predict: {frames: 1}\n"
        "export: {formats: []}\n"
    )
    result = run_scenario(load_scenario(write(tmp_path, text)), pipe, tmp_path / "out")
    turns = [(t.role, t.kind, t.text) for t in result.session.turns]
    assert turns == [("user", "text", ""), ("model", "image", None), ("model", "image", None)]
    assert result.session.main.length > 2 * sum(pipe.image_token_counts(32, 32))  # framed


@pytest.mark.parametrize(
    "step",
    [
        "edit: {instruction: ''}",
        "agent: {goal: '   '}",
        'story: {beats: ["\\n"]}',
        "navigate: {actions: [forward], templates: {forward: ' '}}",
        "predict: {frames: 1, instruction: ''}",
    ],
)
def test_blank_texts_that_mean_nothing_are_refused(tmp_path, step):
    err = refused(write(tmp_path, BASE.replace("predict: {frames: 1}", step)))
    assert "must hold a non-space character" in str(err) and err.field.startswith("steps[0]")


# -- the server's generation settings are the same model ------------------------------


def test_the_server_takes_settings_and_templates_as_a_scenario_does(pipe, tmp_path):
    client = TestClient(create_app(pipe, tmp_path / "sessions"), base_url="http://127.0.0.1:8000")
    sid = client.post("/sessions").json()["id"]
    for params, loc, words in (
        ({"num_timestep": 3}, "num_timestep", "unknown key; did you mean 'num_timesteps'?"),
        ({"num_timesteps": 1}, "num_timesteps", "must be an integer between 2 and 1000, got 1"),
        ({"cfg_interval": [0.5, 2]}, "cfg_interval", "must be between 0 and 1, got 2"),
        ({"do_sample": 1}, "do_sample", "bool"),
    ):
        response = client.post(f"/sessions/{sid}/generate", json={"params": params})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"][:3] == ["body", "params", loc] and words in error["msg"], error
    huge = {"degrees": 5, "steps": 1, "template": "{degrees:>10000000}"}  # no MemoryError
    response = client.post(f"/sessions/{sid}/chains/rotate", json=huge)
    assert response.status_code == 422 and "width or precision over 100" in response.text
    assert client.get(f"/sessions/{sid}").json()["turns"] == []
