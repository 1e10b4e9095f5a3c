"""Structured output: schemas -> constrained decoding with a random-weight model, 100% valid at temperature 1."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jsonschema
import pytest
from higgs.errors import InvalidRequestError
from higgs.messages import ChatRequest, ResponseFormat, Tool, ToolChoice
from higgs.specs import ArchitectureSpec

from higgs_mlx.agents import make_logits_processors, output_regex
from higgs_mlx.agents.constrain import RegexConstraint, cache_info, compile_regex
from higgs_mlx.agents.schema import UnsupportedSchemaError, nonneg_range, number_regex, schema_to_regex
from higgs_mlx.agents.syntaxes import SYNTAXES, get_syntax
from higgs_mlx.agents.toolcalls import ToolCallParser
from higgs_mlx.output import ToolArgs, ToolCallEnd, ToolCallStart
from higgs_mlx.testing import build_tiny_model

SCHEMAS: dict[str, dict] = {
    "flat": {"type": "object", "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"}},
             "required": ["name", "ok"]},
    "nested": {"type": "object", "properties": {
        "user": {"type": "object", "properties": {"id": {"type": "integer"}, "address": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}},
            "required": ["id", "address"]}}, "required": ["user"]},
    "array": {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
                                                        "minItems": 1, "maxItems": 4}}, "required": ["tags"]},
    "enum": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                              "size": {"type": "string", "enum": ["S", "M", "L"]}},
             "required": ["color", "size"]},
    "int_bounds": {"type": "object", "properties": {"age": {"type": "integer", "minimum": 18, "maximum": 99},
                                                    "delta": {"type": "integer", "minimum": -50, "maximum": 5}},
                   "required": ["age", "delta"]},
    "number_bounds": {"type": "object", "properties": {
        "p": {"type": "number", "minimum": 0, "maximum": 1},
        "t": {"type": "number", "exclusiveMinimum": -3.5, "exclusiveMaximum": 2.25}}, "required": ["p", "t"]},
    "optional": {"type": "object", "properties": {"a": {"type": "string", "maxLength": 6}, "b": {"type": "integer"},
                                                  "c": {"type": "boolean"}}, "required": ["a"]},
    "anyof": {"type": "object", "properties": {"v": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9},
                                                               {"type": "string", "maxLength": 5},
                                                               {"type": "null"}]}}, "required": ["v"]},
    "array_of_objects": {"type": "object", "properties": {"items": {"type": "array", "maxItems": 3, "items": {
        "type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                                         "qty": {"type": "integer", "minimum": 1, "maximum": 20}},
        "required": ["sku", "qty"]}}}, "required": ["items"]},
    "refs_and_formats": {"$defs": {"when": {"type": "string", "format": "date"}},
                         "type": "object", "properties": {"start": {"$ref": "#/$defs/when"},
                                                          "id": {"type": "string", "format": "uuid"},
                                                          "kind": {"const": "event"}},
                         "required": ["start", "id", "kind"]},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """A random-weight llama that may emit any token, and its tokenizer."""
    from mlx_lm import load

    path = build_tiny_model("llama", tmp_path_factory.mktemp("structured") / "raw", seed=7, plain_output=False)
    return load(str(path))


def _generate(model, tokenizer, processors, max_tokens: int, seed: int) -> str:
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    mx.random.seed(seed)
    prompt = mx.array(tokenizer.encode("Answer in JSON please."))
    out: list[int] = []
    steps = generate_step(prompt, model, max_tokens=max_tokens, sampler=make_sampler(temp=1.0),
                          logits_processors=processors)
    for token, _ in steps:
        token = int(token)
        if token in tokenizer.eos_token_ids:
            break
        out.append(token)
    return tokenizer.decode(out)


@pytest.mark.slow  # ~20-40 s on a shared 2-core CPU: the issue's acceptance test, kept in the default run
def test_json_schema_compliance_10_schemas_x20(tiny, record_property):
    model, tokenizer = tiny
    started = time.perf_counter()
    total = 0
    for name, schema in SCHEMAS.items():
        limit = 100 if name == "refs_and_formats" else 48  # a uuid and a date need ~81 one-byte tokens
        request = ChatRequest(model="m", max_tokens=limit,
                              response_format=ResponseFormat(type="json_schema", json_schema=schema))
        for sample in range(20):
            text = _generate(model, tokenizer, make_logits_processors(request, tokenizer), limit, seed=sample)
            try:
                jsonschema.validate(json.loads(text), schema)
            except (json.JSONDecodeError, jsonschema.ValidationError) as err:
                pytest.fail(f"schema {name}, sample {sample}: {text!r}: {err}")
            total += 1
    elapsed = time.perf_counter() - started
    record_property("json_schema_samples", total)
    record_property("json_schema_seconds", round(elapsed, 2))
    print(f"\n{total} constrained samples (10 schemas x 20, max_tokens 48/100, temperature 1) in {elapsed:.1f}s")
    assert total == 200


def test_json_object_and_tight_max_tokens(tiny):
    model, tokenizer = tiny
    request = ChatRequest(model="m", response_format=ResponseFormat(type="json_object"))
    for seed in range(5):
        text = _generate(model, tokenizer, make_logits_processors(request, tokenizer, max_tokens=12), 12, seed)
        assert isinstance(json.loads(text), dict), text
    schema = SCHEMAS["nested"]
    tight = ChatRequest(model="m", max_tokens=44,
                        response_format=ResponseFormat(type="json_schema", json_schema=schema))
    for seed in range(5):  # the budget runs out mid-string: length-aware masking still closes the JSON
        text = _generate(model, tokenizer, make_logits_processors(tight, tokenizer), 44, seed)
        jsonschema.validate(json.loads(text), schema)


def test_max_tokens_below_the_shortest_output_is_400(tiny):
    _, tokenizer = tiny
    request = ChatRequest(model="m", max_tokens=3,
                          response_format=ResponseFormat(type="json_schema", json_schema=SCHEMAS["nested"]))
    with pytest.raises(InvalidRequestError, match="max_tokens=3 is too small"):
        make_logits_processors(request, tokenizer)


def test_compiled_indexes_are_cached(tiny):
    _, tokenizer = tiny
    regex = schema_to_regex(SCHEMAS["enum"])
    assert compile_regex(tokenizer, regex) is compile_regex(tokenizer, regex)
    assert cache_info()["indexes"] >= 1


@pytest.mark.parametrize(("schema", "feature"), [
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}, "multipleOf"),
    ({"type": "object", "properties": {"s": {"not": {"type": "string"}}}}, "not"),
    ({"type": "string", "format": "ipv4"}, "format: ipv4"),
    ({"allOf": [{"type": "object"}, {"required": ["a"]}]}, "allOf with several schemas"),
    ({"type": "object", "patternProperties": {"^a": {"type": "string"}}}, "patternProperties"),
    ({"type": "object", "minProperties": 1}, "minProperties"),
])
def test_unsupported_schema_feature_is_a_400_naming_it(schema, feature):
    request = ChatRequest(model="m", response_format=ResponseFormat(type="json_schema", json_schema=schema))
    with pytest.raises(UnsupportedSchemaError) as info:
        output_regex(request)
    assert info.value.status == 400
    assert f"'{feature}'" in str(info.value)
    assert info.value.info.param == "response_format"


@pytest.mark.parametrize(("lo", "hi"), [(0, 0), (0, 9), (5, 123), (18, 99), (7, 7), (10, 1000), (99, 101), (0, 5000)])
def test_integer_range_regex_is_exact(lo, hi):
    pattern = re.compile(nonneg_range(lo, hi))
    for n in range(0, hi * 2 + 20):
        assert bool(pattern.fullmatch(str(n))) == (lo <= n <= hi), n


@pytest.mark.parametrize("node", [
    {"minimum": -50, "maximum": 5}, {"minimum": 3}, {"maximum": -7}, {"exclusiveMinimum": -3, "exclusiveMaximum": 12},
])
def test_signed_integer_bounds(node):
    pattern = re.compile(number_regex(node, "integer"))
    lo = node.get("minimum", node.get("exclusiveMinimum", -10**6 - 1) + ("exclusiveMinimum" in node))
    hi = node.get("maximum", node.get("exclusiveMaximum", 10**6 + 1) - ("exclusiveMaximum" in node))
    for n in range(-300, 300):
        assert bool(pattern.fullmatch(str(n))) == (lo <= n <= hi), (node, n)


@pytest.mark.parametrize("node", [
    {"minimum": 0, "maximum": 1}, {"exclusiveMinimum": -3.5, "exclusiveMaximum": 2.25}, {"minimum": 2.5},
    {"maximum": -0.5}, {"minimum": -10, "maximum": 10},
])
def test_number_bounds_only_allow_values_in_range(node):
    pattern = re.compile(number_regex(node, "number"))
    matched = 0
    for whole in range(-20, 21):
        for frac in ("", ".0", ".25", ".5", ".999"):
            for sign in ("", "-"):
                text = f"{sign}{abs(whole)}{frac}"
                if pattern.fullmatch(text):
                    matched += 1
                    value = float(text)
                    assert "minimum" not in node or value >= node["minimum"], text
                    assert "maximum" not in node or value <= node["maximum"], text
                    assert "exclusiveMinimum" not in node or value > node["exclusiveMinimum"], text
                    assert "exclusiveMaximum" not in node or value < node["exclusiveMaximum"], text
    assert matched > 3


TOOLS = [Tool(name="get_weather", input_schema={"type": "object", "properties": {
             "city": {"type": "string", "maxLength": 10}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
             "required": ["city", "days"]}),
         Tool(name="get_time", input_schema={"type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}},
                                             "required": ["tz"]})]


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
@pytest.mark.parametrize("choice", [ToolChoice(type="any"), ToolChoice(type="tool", name="get_weather")])
def test_forced_tool_call_is_a_valid_call_in_the_family_syntax(tiny, syntax, choice):
    model, tokenizer = tiny
    arch = ArchitectureSpec(name=syntax, model_types=(syntax,), module="m", tool_parser=syntax)
    # the tiny vocabulary spells DeepSeek's tags byte by byte: ~160 tokens for the shortest call
    request = ChatRequest(model="m", tools=TOOLS, tool_choice=choice, max_tokens=220)
    schemas = {t.name: t.input_schema for t in TOOLS}
    for seed in range(4):
        text = _generate(model, tokenizer, make_logits_processors(request, tokenizer, arch=arch), 220, seed)
        parser = ToolCallParser(get_syntax(syntax), schemas)
        segments = parser.feed(text) + parser.finish()
        starts = [s for s in segments if isinstance(s, ToolCallStart)]
        assert len(starts) == 1 and sum(isinstance(s, ToolCallEnd) for s in segments) == 1, (text, segments)
        if choice.type == "tool":
            assert starts[0].name == "get_weather"
        args = json.loads("".join(s.text for s in segments if isinstance(s, ToolArgs)))
        jsonschema.validate(args, schemas[starts[0].name])


def test_unknown_forced_tool_is_400():
    request = ChatRequest(model="m", tools=TOOLS, tool_choice=ToolChoice(type="tool", name="nope"))
    with pytest.raises(InvalidRequestError, match="nope"):
        output_regex(request)


def test_prompt_opened_reasoning_constrains_after_the_close_tag(tiny):
    """A template that opened <think>: the model reasons freely, then the JSON starts after </think>."""
    import mlx.core as mx

    _, tokenizer = tiny
    arch = ArchitectureSpec(name="r1", model_types=("r1",), module="m", reasoning_tags=("<think>", "</think>"))
    schema = SCHEMAS["enum"]
    request = ChatRequest(model="m", response_format=ResponseFormat(type="json_schema", json_schema=schema))
    (processor,) = [p for p in make_logits_processors(request, tokenizer, arch=arch) if isinstance(p, RegexConstraint)]
    prompt = tokenizer.encode("question") + tokenizer._tokenizer.encode("<think>", add_special_tokens=False)
    history = list(prompt)
    free = processor(mx.array(history), mx.zeros((1, 400)))
    assert not processor.active and bool(mx.all(free == 0))  # reasoning is not constrained
    close = tokenizer._tokenizer.encode("</think>", add_special_tokens=False)
    history += [65, 66, *close]
    masked = processor(mx.array(history), mx.zeros((1, 400)))
    assert processor.active and int(mx.sum(masked == 0)) < 400


def test_schema_file_is_not_changed():
    """The placeholder swap works on a copy: the caller's schema is untouched."""
    schema = json.loads(json.dumps(SCHEMAS["int_bounds"]))
    schema_to_regex(schema)
    assert schema == SCHEMAS["int_bounds"]
    assert Path(__file__).exists()


def test_template_opened_reasoning_still_ends_in_valid_json(tiny):
    """No budget asked: one is derived from max_tokens, so the block closes in time for the JSON to fit."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = tiny
    arch = ArchitectureSpec(name="r1", model_types=("r1",), module="m", reasoning_tags=("<think>", "</think>"))
    schema = SCHEMAS["int_bounds"]
    request = ChatRequest(model="m", response_format=ResponseFormat(type="json_schema", json_schema=schema))
    prompt = tokenizer.encode("question") + tokenizer._tokenizer.encode("<think>", add_special_tokens=False)
    for seed in range(4):
        mx.random.seed(seed)
        processors = make_logits_processors(request, tokenizer, arch=arch, max_tokens=60)
        out: list[int] = []
        for token, _ in generate_step(mx.array(prompt), model, max_tokens=60, sampler=make_sampler(temp=1.0),
                                      logits_processors=processors):
            if int(token) in tokenizer.eos_token_ids:
                break
            out.append(int(token))
        text = tokenizer.decode(out)
        assert "</think>" in text, text
        jsonschema.validate(json.loads(text.split("</think>", 1)[1]), schema)
