"""Text conventions shared by every stage: numbers, equations, answers, prompts.

One place decides how a record becomes training text and how a generation is
read back, so that training, evaluation and (later) the rewards agree.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

ANSWER_MARKER = "###"
# Latent markers as in the paper's code (method.md section 2).
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
_EQUATION_RE = re.compile(
    r"^\s*(" + _NUMBER + r")\s*([-+*/x])\s*(" + _NUMBER + r")\s*=\s*(" + _NUMBER + r")\s*$"
)


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


def parse_equation(step: str) -> tuple[str, str, str, str] | None:
    """Split `<<a op b=c>>` into (a, op, b, c); None when it is not one binary equation."""
    inner = step.strip()
    if inner.startswith("<<") and inner.endswith(">>"):
        inner = inner[2:-2]
    match = _EQUATION_RE.match(inner)
    if match is None:
        return None
    a, op, b, c = match.groups()
    return a, ("*" if op == "x" else op), b, c


def equation_holds(step: str) -> bool:
    """True when `step` is a binary equation whose arithmetic is right."""
    parts = parse_equation(step)
    if parts is None:
        return False
    a, op, b, c = (Decimal(p.replace(",", "")) if i != 1 else p for i, p in enumerate(parts))
    if op == "/":
        return b != 0 and a / b == c
    return {"+": a + b, "-": a - b, "*": a * b}[op] == c


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
