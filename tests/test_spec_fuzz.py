"""No text makes the spec front end fail any way but a SpecError: a property test."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnmem.errors import SpecError
from nnmem.frontends.spec import LAYER_KINDS, LayerKind, Textbook, parse_spec, textbook
from nnmem.frontends.spec.registry import ValueType, layer_kinds

_WORDS = [*sorted(LAYER_KINDS), "input", "residual", "repeat", "tokens", "signal", "sequence", "image"]
_FLAGS = ["same", "valid", "ceil", "floor", "last", "bidirectional", "causal", "norm_first", "true"]
_OPTIONS = ["stride", "pad", "dilation", "groups", "bias", "layers", "ff", "p", "eps", "multiplier"]
_NUMBERS = st.integers(min_value=0, max_value=70).map(str) | st.sampled_from(["0.5", "1e-5", "2**3", "-1"])
_SIZES = st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=4).map(
    lambda sizes: "x".join(str(s) for s in sizes)
)
_TOKENS = st.one_of(
    st.sampled_from(_WORDS),
    st.sampled_from(_FLAGS),
    _NUMBERS,
    _SIZES,
    st.builds(
        lambda key, value: f"{key}={value}", st.sampled_from(_OPTIONS), _NUMBERS | st.sampled_from(_FLAGS)
    ),
    st.sampled_from(["/", "\n", ";", "{", "}", ":", "=", "#", "name:", "a:", "\t"]),
    st.text(max_size=4),
)
_SHAPES = st.sampled_from(
    ["input 12x12x3", "input 16x4 signal", "input 6x8 sequence", "input 10", "input 6 tokens"]
)


def _spec_text(start: str, tokens: list[str]) -> str:
    return start + " / " + " ".join(tokens)


# mostly well-formed statements with small numbers, to reach shapes and PyTorch's rules
_ARGUMENTS = st.one_of(
    st.integers(min_value=1, max_value=8).map(str),
    st.sampled_from(["3x3", "2x2", "1x1", "5x5", "3x3x3", "0.5", "0.1"]),
    st.sampled_from(_FLAGS),
    st.builds(
        lambda key, value: f"{key}={value}",
        st.sampled_from(_OPTIONS),
        st.sampled_from(["0", "1", "2", "3", "2x2", "same", "false", "true", "0.2"]),
    ),
)
_VALUES = {
    ValueType.COUNT: st.integers(min_value=1, max_value=8).map(str),
    ValueType.SIZE: st.sampled_from(["1", "2", "3", "2x2", "3x3", "1x3"]),
    ValueType.PADDING: st.sampled_from(["0", "1", "same", "valid", "1x0"]),
    ValueType.FRACTION: st.sampled_from(["0", "0.1", "0.5"]),
    ValueType.NUMBER: st.sampled_from(["1e-5", "0.001"]),
    ValueType.BOOL: st.sampled_from(["true", "false"]),
    ValueType.WORD: st.sampled_from(["relu", "gelu"]),
}


def _layer(kind: LayerKind) -> st.SearchStrategy[str]:
    """`kind`'s numbers in order, then some of its flags and options, with small values."""
    numbers = [_VALUES[param.type] for param in kind.positional if param.required]
    extras = [st.just(flag.word) for flag in kind.flags] + [
        _VALUES[param.type].map(lambda value, name=param.name: f"{name}={value}") for param in kind.options
    ]
    chosen = st.lists(st.one_of(extras), max_size=1) if extras else st.just([])
    return st.builds(lambda *parts: " ".join([kind.name, *parts[:-1], *parts[-1]]), *numbers, chosen)


_GOOD_LAYER = st.sampled_from(sorted(layer_kinds(), key=lambda kind: kind.name)).flatmap(_layer)
_ANY_LAYER = st.builds(
    lambda kind, args: " ".join([kind, *args]),
    st.sampled_from(sorted(LAYER_KINDS)),
    st.lists(_ARGUMENTS, max_size=3),
)
_STATEMENTS = st.recursive(
    st.one_of(_GOOD_LAYER, _GOOD_LAYER, _GOOD_LAYER, _ANY_LAYER),
    lambda inner: st.one_of(
        st.builds(
            lambda body: "residual { " + " / ".join(body) + " }", st.lists(inner, min_size=1, max_size=3)
        ),
        st.builds(
            lambda count, body: f"repeat {count} {{ " + "\n".join(body) + " }",
            st.integers(min_value=1, max_value=3),
            st.lists(inner, min_size=1, max_size=3),
        ),
    ),
    max_leaves=8,
)
_SPECS = st.builds(
    lambda start, body: "\n".join([start, *body]),
    _SHAPES,
    st.lists(_STATEMENTS, max_size=6),
)

_TEXTS = st.one_of(
    st.text(max_size=60),  # anything at all
    st.builds(" ".join, st.lists(_TOKENS, max_size=25)),  # words of the language, in any order
    st.builds(_spec_text, _SHAPES, st.lists(_TOKENS, max_size=25)),  # a valid start, then soup
    _SPECS,  # statements that mostly parse, so that shapes and PyTorch's rules are reached
    _SPECS,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXTS)
def test_any_text_gives_a_textbook_or_a_spec_error(text: str) -> None:
    try:
        book = textbook(parse_spec(text))
    except SpecError as error:
        message = str(error)
        assert message.startswith("<spec>:"), message  # always placed: line and column
        assert "Traceback" not in message
        return
    assert isinstance(book, Textbook)
    assert book.parameters >= 0
    assert book.activation_elements >= book.rows[0].activation_elements
