"""Reading a text spec: words and punctuation (lexer), then statements (parser).

The grammar (docs/spec.md has the whole language):

    spec      = input { SEP statement }
    statement = [ NAME ":" ] ( layer | residual | repeat )
    layer     = KIND { VALUE | FLAG | OPTION "=" VALUE }
    residual  = "residual" "{" statements "}"
    repeat    = "repeat" COUNT "{" statements "}"

SEP is a new line, " / " or ";"; `#` starts a comment. Every error is a `SpecError` whose
message starts `source:line:column:` and shows the line with a caret under the culprit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nnmem.categories import StrEnum
from nnmem.errors import SpecError, did_you_mean
from nnmem.frontends.spec import layers as _layers  # noqa: F401  (registers the kinds)
from nnmem.frontends.spec.nodes import (
    Args,
    InputNode,
    LayerNode,
    Layout,
    Node,
    Position,
    RepeatNode,
    ResidualNode,
    SampleShape,
    Spec,
    Value,
)
from nnmem.frontends.spec.registry import (
    BLOCK_WORDS,
    LAYER_KINDS,
    LayerKind,
    ValueType,
    convert,
)

MAX_LAYERS = 10_000
"""The most layers a spec may unroll to (repeats included): a guard, not a design limit."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_PUNCTUATION = "#/;{}:="


class TokenKind(StrEnum):
    """The lexer's categories."""

    WORD = "word"
    SEP = "separator"  # a new line, '/' or ';'
    EQUALS = "="
    COLON = ":"
    OPEN = "{"
    CLOSE = "}"
    END = "end"


@dataclass(frozen=True)
class Token:
    """One word or punctuation mark, with where it starts."""

    kind: TokenKind
    text: str
    position: Position


def locate(source: str, text: str, position: Position, message: str) -> str:
    """`source:line:column: message`, then the line itself and a caret under the column."""
    lines = text.split("\n")
    head = f"{source}:{position.line}:{position.column}: {message}"
    if not 1 <= position.line <= len(lines):
        return head
    line = lines[position.line - 1].replace("\t", " ").rstrip()
    start = max(0, position.column - 1 - 40)
    shown = ("…" if start else "") + line[start : start + 100]
    caret = " " * (position.column - 1 - start + (1 if start else 0)) + "^"
    return f"{head}\n    {shown}\n    {caret}"


def tokenize(text: str) -> list[Token]:
    """Split `text` into tokens; it always ends with an END token."""
    tokens: list[Token] = []
    line, column, index = 1, 1, 0
    while index < len(text):
        char = text[index]
        here = Position(line, column)
        if char == "\n":
            tokens.append(Token(TokenKind.SEP, "new line", here))
            line, column, index = line + 1, 1, index + 1
            continue
        if char == "#":
            end = text.find("\n", index)
            end = len(text) if end < 0 else end
            column, index = column + end - index, end
            continue
        if char.isspace():
            column, index = column + 1, index + 1
            continue
        if char in _PUNCTUATION:
            kind = {
                "/": TokenKind.SEP,
                ";": TokenKind.SEP,
                "=": TokenKind.EQUALS,
                ":": TokenKind.COLON,
                "{": TokenKind.OPEN,
                "}": TokenKind.CLOSE,
            }[char]
            tokens.append(Token(kind, char, here))
            column, index = column + 1, index + 1
            continue
        end = index
        while end < len(text) and not text[end].isspace() and text[end] not in _PUNCTUATION:
            end += 1
        tokens.append(Token(TokenKind.WORD, text[index:end], here))
        column, index = column + end - index, end
    tokens.append(Token(TokenKind.END, "end of spec", Position(line, column)))
    return tokens


def parse_spec(text: str, source: str = "<spec>") -> Spec:
    """Parse a spec written as text (a file's contents, or inline with " / ")."""
    return _Parser(text, source).spec()


def _shown(token: Token) -> str:
    return f"'{token.text}'" if token.kind is not TokenKind.END else "the end of the spec"


class _Parser:
    """Recursive descent over the token list; one method per grammar rule."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.tokens = tokenize(text)
        self.index = 0

    def error(self, position: Position, message: str) -> SpecError:
        return SpecError(locate(self.source, self.text, position, message))

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.peek()
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def skip_separators(self) -> None:
        while self.peek().kind is TokenKind.SEP:
            self.advance()

    def spec(self) -> Spec:
        self.skip_separators()
        first = self.input()
        body = self.statements(opened=None)
        size, culprit = _unrolled_size(body)
        if size > MAX_LAYERS:
            raise self.error(
                culprit,
                f"this spec unrolls to {size:,} layers; nnmem reads at most {MAX_LAYERS:,} "
                "(lower a repeat count)",
            )
        return Spec(first, body, self.source, self.text)

    def input(self) -> InputNode:
        token = self.advance()
        example = "e.g. 'input 50x50x3' (H x W x C)"
        if token.kind is not TokenKind.WORD or token.text != "input":
            if token.kind is TokenKind.END:
                raise self.error(Position(1, 1), f"empty spec: a spec starts with 'input SHAPE', {example}")
            raise self.error(
                token.position, f"a spec starts with 'input SHAPE', {example}; found {_shown(token)}"
            )
        shape_token = self.advance()
        if shape_token.kind is not TokenKind.WORD:
            raise self.error(shape_token.position, f"input needs a shape, {example}")
        try:
            value = convert(ValueType.SIZE, shape_token.text)
        except ValueError as problem:
            raise self.error(shape_token.position, f"the input shape must be {problem}, {example}") from None
        sizes = (value,) if isinstance(value, int) else value
        assert isinstance(sizes, tuple)
        layout_token = self.peek()
        layout: Layout | None = None
        if layout_token.kind is TokenKind.WORD:
            self.advance()
            try:
                layout = Layout(layout_token.text)
            except ValueError:
                words = [item.value for item in Layout]
                raise self.error(
                    layout_token.position,
                    f"unknown input layout '{layout_token.text}'{did_you_mean(layout_token.text, words)}"
                    f" (one of {', '.join(words)})",
                ) from None
        extra = self.peek()
        if extra.kind not in (TokenKind.SEP, TokenKind.END):
            raise self.error(
                extra.position, f"unexpected {_shown(extra)} after the input; start a new line or ' / '"
            )
        shape = _input_shape(sizes, layout)
        if isinstance(shape, str):
            raise self.error(shape_token.position, shape)
        return InputNode(shape, token.position)

    def statements(self, opened: Token | None) -> tuple[Node, ...]:
        nodes: list[Node] = []
        while True:
            self.skip_separators()
            token = self.peek()
            if token.kind is TokenKind.END:
                if opened is not None:
                    raise self.error(opened.position, "this '{' is never closed; add a '}'")
                return tuple(nodes)
            if token.kind is TokenKind.CLOSE:
                if opened is None:
                    raise self.error(token.position, "'}' without a '{' before it")
                self.advance()
                return tuple(nodes)
            nodes.append(self.statement())
            after = self.peek()
            if after.kind not in (TokenKind.SEP, TokenKind.CLOSE, TokenKind.END):
                raise self.error(
                    after.position, f"unexpected {_shown(after)}; start a new line or ' / ' first"
                )

    def statement(self) -> Node:
        token = self.advance()
        if token.kind is not TokenKind.WORD:
            raise self.error(token.position, f"expected a layer, found {_shown(token)}")
        name: str | None = None
        if self.peek().kind is TokenKind.COLON:
            if not _NAME.fullmatch(token.text):
                raise self.error(
                    token.position,
                    f"'{token.text}' cannot name a layer: use letters, digits and _, starting with a letter",
                )
            name = token.text
            self.advance()
            token = self.advance()
            if token.kind is not TokenKind.WORD:
                raise self.error(token.position, f"expected a layer after '{name}:', found {_shown(token)}")
        if token.text == "input":
            raise self.error(token.position, "'input' comes once, as the first line")
        if token.text == "residual":
            return ResidualNode(name, self.block(token), token.position)
        if token.text == "repeat":
            if name is not None:
                raise self.error(
                    token.position, "a repeat has no module of its own to name; name the layers inside"
                )
            return self.repeat(token)
        kind = LAYER_KINDS.get(token.text)
        if kind is None:
            words = [*LAYER_KINDS, *BLOCK_WORDS]
            raise self.error(token.position, f"unknown layer '{token.text}'{did_you_mean(token.text, words)}")
        return LayerNode(kind.name, name, self.arguments(kind, token), token.position)

    def repeat(self, keyword: Token) -> RepeatNode:
        count_token = self.advance()
        try:
            count = convert(ValueType.COUNT, count_token.text) if count_token.kind is TokenKind.WORD else None
        except ValueError:
            count = None
        if not isinstance(count, int):
            raise self.error(
                count_token.position, "repeat needs a count, e.g. 'repeat 3 { conv 3x3 64 same / relu }'"
            )
        return RepeatNode(count, self.block(keyword), keyword.position)

    def block(self, keyword: Token) -> tuple[Node, ...]:
        self.skip_separators()
        opened = self.advance()
        if opened.kind is not TokenKind.OPEN:
            raise self.error(
                opened.position,
                f"{keyword.text} needs its layers in braces, "
                f"e.g. '{keyword.text} {{ conv 3x3 64 same / relu }}'",
            )
        body = self.statements(opened)
        if not body:
            raise self.error(opened.position, f"this {keyword.text} block has no layers")
        return body

    def arguments(self, kind: LayerKind, keyword: Token) -> Args:
        given: dict[str, Value] = {}
        positional = 0
        usage = f"usage: {kind.usage()}"
        while self.peek().kind is TokenKind.WORD:
            word = self.advance()
            if self.peek().kind is TokenKind.EQUALS:
                self.advance()
                value_token = self.advance()
                param = kind.param(word.text)
                if param is None and not word.text[0].isalpha():
                    raise self.error(
                        word.position, f"options are written name=value, not '{word.text}='; {usage}"
                    )
                if param is None:
                    names = [p.name for p in (*kind.positional, *kind.options)]
                    hint = did_you_mean(word.text, names)
                    raise self.error(word.position, f"{kind.name} has no option '{word.text}'{hint}; {usage}")
                if value_token.kind is not TokenKind.WORD:
                    raise self.error(value_token.position, f"'{word.text}=' needs a value; {usage}")
                self.give(given, param.name, self.value(kind, param.name, value_token), word)
            elif word.text[0].isalpha():
                flag = next((f for f in kind.flags if f.word == word.text), None)
                if flag is None:
                    words = [f.word for f in kind.flags] + [p.name for p in kind.options]
                    hint = did_you_mean(word.text, words)
                    raise self.error(word.position, f"{kind.name} does not take '{word.text}'{hint}; {usage}")
                self.give(given, flag.option, flag.value, word)
            else:
                if positional >= len(kind.positional):
                    count = len(kind.positional)
                    raise self.error(
                        word.position,
                        f"{kind.name} takes {count} number{'s' if count != 1 else ''} before its options; "
                        f"'{word.text}' is one too many; {usage}",
                    )
                name = kind.positional[positional].name
                positional += 1
                self.give(given, name, self.value(kind, name, word), word)
        stray = self.peek()
        if stray.kind in (TokenKind.EQUALS, TokenKind.COLON):
            raise self.error(
                stray.position, f"unexpected '{stray.text}'; options are written name=value; {usage}"
            )
        if stray.kind is TokenKind.OPEN:
            raise self.error(stray.position, "'{' opens a block only after 'residual' or 'repeat N'")
        for param in kind.positional:
            if param.required and param.name not in given:
                raise self.error(
                    keyword.position, f"{kind.name} needs {param.name.upper()} ({param.help}); {usage}"
                )
        values = tuple(
            (param.name, given.get(param.name, param.default)) for param in (*kind.positional, *kind.options)
        )
        return Args(values)

    def value(self, kind: LayerKind, name: str, token: Token) -> Value:
        param = kind.param(name)
        assert param is not None
        try:
            return convert(param.type, token.text, param.choices)
        except ValueError as problem:
            raise self.error(
                token.position, f"{kind.name}: {name} must be {problem}, not '{token.text}'"
            ) from None

    def give(self, given: dict[str, Value], name: str, value: Value, token: Token) -> None:
        if name in given:
            raise self.error(token.position, f"{name} is given twice")
        given[name] = value


def _input_shape(sizes: tuple[int, ...], layout: Layout | None) -> SampleShape | str:
    """The input's shape in PyTorch order, or what is wrong with it."""
    if layout is None:
        if len(sizes) == 2:
            return (
                "a 2-number input needs its layout: 'signal' (L x C, for conv1d; tensor (N, C, L)) "
                "or 'sequence' (T x E, for lstm / attention; tensor (N, T, E))"
            )
        layout = {3: Layout.IMAGE, 1: Layout.VECTOR}.get(len(sizes))
        if layout is None:
            return f"an input has 1, 2 or 3 numbers (H x W x C for an image), not {len(sizes)}"
    wanted = {
        Layout.IMAGE: (3, "H x W x C"),
        Layout.SIGNAL: (2, "L x C"),
        Layout.SEQUENCE: (2, "T x E"),
        Layout.VECTOR: (1, "F"),
        Layout.TOKENS: (1, "T"),
    }[layout]
    if len(sizes) != wanted[0]:
        return f"a {layout.value} input is written {wanted[1]}, not {len(sizes)} number(s)"
    if layout is Layout.IMAGE:
        height, width, channels = sizes
        return SampleShape(layout, (channels, height, width))
    if layout is Layout.SIGNAL:
        length, channels = sizes
        return SampleShape(layout, (channels, length))
    return SampleShape(layout, sizes)


def _unrolled_size(nodes: tuple[Node, ...]) -> tuple[int, Position]:
    """How many layers `nodes` make once repeats are unrolled (stopping past MAX_LAYERS),
    and where the statement is that took the count past it."""
    total = 0
    for node in nodes:
        if isinstance(node, LayerNode):
            total += 1
        else:
            inner, culprit = _unrolled_size(node.body)
            if inner > MAX_LAYERS:
                return inner, culprit
            total += 1 + inner if isinstance(node, ResidualNode) else node.count * inner
        if total > MAX_LAYERS:
            return total, node.position
    return total, Position(1, 1)
