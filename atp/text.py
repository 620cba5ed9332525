"""Text conventions shared by every stage: numbers, equations, answers, prompts.

One place decides how a record becomes training text and how a generation is
read back, so that training, evaluation and (later) the rewards agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

ANSWER_MARKER = "###"
# Latent markers as in the paper's code (docs/method.md, section 2).
BOT = "<|start-latent|>"
LATENT = "<|latent|>"
EOT = "<|end-latent|>"
PAD = "<|pad|>"
EOS = "<|eos|>"
UNK = "<|unk|>"
SPECIAL_TOKENS = [PAD, EOS, UNK, BOT, LATENT, EOT]

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_ANSWER_RE = re.compile(re.escape(ANSWER_MARKER) + r"\s*(" + _NUMBER + r")")
_STEP_RE = re.compile(r"<<([^<>]*)>>")


def canonical_number(value: str | int | float | Decimal) -> str:
    """Canonical answer string: no commas, no trailing zeros, no exponent.

    >>> canonical_number("1,000.50"), canonical_number(3.0), canonical_number("-0")
    ('1000.5', '3', '0')
    """
    if isinstance(value, float):
        value = repr(value)
    text = str(value).strip().replace(",", "")
    try:
        number = Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {value!r}") from exc
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def numbers_equal(a: str, b: str) -> bool:
    """Compare two number strings by value (`7` equals `7.0`, `1,000` equals `1000`)."""
    try:
        return Decimal(a.replace(",", "")) == Decimal(b.replace(",", ""))
    except (InvalidOperation, AttributeError):
        return False


def parse_answer(generation: str) -> str | None:
    """The number after the first answer marker, canonicalised; None if absent.

    Tolerates commas inside the number and any trailing text.

    >>> parse_answer("<<2+3=5>>\\n### 1,250 apples")
    '1250'
    >>> parse_answer("no marker 42") is None
    True
    """
    match = _ANSWER_RE.search(generation)
    if match is None:
        return None
    try:
        return canonical_number(match.group(1))
    except ValueError:
        return None


def extract_steps(text: str) -> list[str]:
    """All `<<...>>` calculator annotations of a text, as `<<...>>` strings."""
    return [f"<<{inner}>>" for inner in _STEP_RE.findall(text)]


@dataclass(frozen=True)
class Equation:
    """One calculator step `<<expression=result>>` (GSM8K-Aug's form): its operands, in order, and its result.

    The expression may hold any number of operands, `+ - * /` (`x` and `×` read as `*`), parentheses,
    decimals, negative numbers and thousands commas: `<<1200-300-350=550>>`, `<<(2+3)*4=20>>`.
    """

    expression: str  # the text left of `=`
    operands: tuple[str, ...]  # its numbers, canonical (a leading minus belongs to the number)
    result: str  # the number right of `=`, canonical
    value: Decimal | None  # the expression's value; None when it divides by zero

    def holds(self) -> bool:
        """The arithmetic is right: exactly, or to the result's last decimal place when the result is rounded
        (`<<10/3=3.33>>` holds, `<<12/5=2>>` does not)."""
        if self.value is None:
            return False
        result = Decimal(self.result)
        if self.value == result:
            return True
        places = -result.as_tuple().exponent if "." in self.result else 0
        return places > 0 and abs(self.value - result) < Decimal(10) ** -places / 2


_TOKEN_RE = re.compile(r"\s*(?:(\d[\d,]*(?:\.\d+)?|\.\d+)|([-+*/x×()]))")


def _tokens(expression: str) -> list[str] | None:
    out, pos = [], 0
    text = expression.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            return None
        out.append(match.group(1) or {"x": "*", "×": "*"}.get(match.group(2), match.group(2)))
        pos = match.end()
    return out


class _Expression:
    """A small recursive-descent reader of + - * / and parentheses over Decimals (no `eval`)."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.i, self.operands, self.divides_by_zero = tokens, 0, [], False

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        self.i += 1
        return self.tokens[self.i - 1]

    def sum(self) -> Decimal:
        value = self.product()
        while self.peek() in ("+", "-"):
            op, right = self.take(), self.product()
            value = value + right if op == "+" else value - right
        return value

    def product(self) -> Decimal:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op, right = self.take(), self.factor()
            if op == "*":
                value = value * right
            elif right == 0:  # read on for the operands; the equation then has no value
                self.divides_by_zero = True
            else:
                value = value / right
        return value

    def factor(self) -> Decimal:
        token = self.peek()
        if token == "-":
            self.take()
            if self.peek() not in (None, "(", "+", "-", "*", "/", ")"):  # a negative number: the minus is its sign
                number = "-" + self.take().replace(",", "")
                self.operands.append(canonical_number(number))
                return Decimal(number)
            return -self.factor()
        if token == "(":
            self.take()
            value = self.sum()
            if self.peek() != ")":
                raise ValueError("unbalanced parenthesis")
            self.take()
            return value
        if token is None or token in "+*/)":
            raise ValueError(f"unexpected {token!r}")
        number = self.take().replace(",", "")
        self.operands.append(canonical_number(number))
        return Decimal(number)


def parse_equation(step: str) -> Equation | None:
    """The equation of a step `<<expression=result>>` (or its bare inside), or None when it is not one.

    Nothing may surround the markers: a truncated (`<<3*4=12`) or wrapped (`<<3*4=12>>junk`,
    `x<<3*4=12>>`) step is not an equation.

    >>> parse_equation("<<1,200-300-350=550>>").operands, parse_equation("<<(2+3)*4=20>>").holds()
    (('1200', '300', '350'), True)
    >>> [parse_equation(s) for s in ("<<3*4=12", "<<3*4=12>>junk", "x<<3*4=12>>", "<<3*4>>", "<<3*4=x>>")]
    [None, None, None, None, None]
    """
    text = step.strip()
    if text.startswith("<<") and text.endswith(">>") and len(text) >= 4:
        text = text[2:-2]
    if "<" in text or ">" in text or text.count("=") != 1:
        return None
    left, right = text.split("=")
    right = right.strip()
    if not re.fullmatch(_NUMBER, right):
        return None
    tokens = _tokens(left)
    if not tokens:
        return None
    reader = _Expression(tokens)
    try:
        value = reader.sum()
    except (ValueError, InvalidOperation):
        return None
    if reader.i != len(tokens):
        return None
    return Equation(
        expression=left.strip(),
        operands=tuple(reader.operands),
        result=canonical_number(right),
        value=None if reader.divides_by_zero else value,
    )


def equation_holds(step: str) -> bool:
    """True when `step` is an equation (any number of operands, parentheses) whose arithmetic is right."""
    equation = parse_equation(step)
    return equation is not None and equation.holds()


def prompt_text(question: str) -> str:
    """What the model sees before it reasons: the question and a newline."""
    return question.strip() + "\n"


def cot_target(steps: list[str], answer: str) -> str:
    """Language CoT target: one step per line, then the answer line (EOS added by the tokenizer step)."""
    return "".join(step + "\n" for step in steps) + answer_text(answer)


def answer_text(answer: str) -> str:
    return f"{ANSWER_MARKER} {answer}"


def normalise_question(question: str) -> str:
    """Normalised form for leakage checks: lower case, letters, digits and single spaces."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", question.lower()).split())
