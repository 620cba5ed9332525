"""The embedded source: seeded arithmetic word problems with many equivalent CoT labels.

A problem is a tree of K binary operations (+, -, *, exact /) over integer
quantities. Every operation is a sentence about one person's count of one kind
of object; leaves are numbers in the text. Its equivalent CoT labels are every
topological order of the operations times every operand swap of + and *; each
record carries ONE of them, chosen at random (docs/method.md, section 2), plus how many
distinct labels it had.

Suites mirror the paper's benchmarks: `test` (in-distribution), `hard` (larger
numbers, like GSM-Hard), `easy` (1-2 operations, like MultiArith) and `varied`
(held-out phrasings, a distractor sentence, question-first wording, like SVAMP).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

from atp.text import normalise_question

NAMES = (
    "Ava Ben Cara Dan Eli Fay Gus Hana Ivan Jade Kai Lena Milo Nora Omar Pia Quinn Rosa Sam Tara "
    "Uma Vic Wes Xena Yara Zed Abe Bea Cole Dina Emil Flor Gil Ines Jon Kira Leo Mara Ned Olga"
).split()
OBJECTS = (
    "apples marbles stickers pencils coins cards books shells stamps beads "
    "cookies candles buttons flowers toys rocks balloons ribbons nuts cups"
).split()
OTHER_OBJECTS = "hats dogs bikes chairs lamps".split()

# Templates per (operation, operand kinds). L = a number in the text, N = another
# person's count. The LAST template of each list is held out of training and used
# only by the `varied` suite. Commutative ops have no LN form (children are swapped).
TEMPLATES: dict[tuple[str, str], list[str]] = {
    ("+", "LL"): [
        "{P} has {a} {obj} and gets {b} more.",
        "{P} picks {a} {obj} in the morning and {b} {obj} in the afternoon.",
        "{P} buys {a} {obj} on Monday and {b} {obj} on Tuesday.",
        "{P} collected {a} {obj}, and later a friend handed over {b} extra.",
    ],
    ("+", "NL"): [
        "{P} has {b} more {obj} than {Q}.",
        "{P} has {b} {obj} more than {Q} does.",
        "Compared with {Q}, {P} owns {b} additional {obj}.",
    ],
    ("+", "NN"): [
        "{P} has as many {obj} as {Q} and {R} together.",
        "{P} has as many {obj} as {Q} and {R} combined.",
        "The {obj} of {Q} and {R} are pooled, and {P} takes all of them.",
    ],
    ("-", "LL"): [
        "{P} has {a} {obj} and gives away {b}.",
        "{P} had {a} {obj} but lost {b} of them.",
        "Out of {a} {obj}, {P} sold {b} at the market and kept the rest.",
    ],
    ("-", "NL"): [
        "{P} has {b} fewer {obj} than {Q}.",
        "{P} has {b} {obj} less than {Q}.",
        "{Q} owns {b} {obj} more than {P} does.",
    ],
    ("-", "LN"): [
        "{P} had {a} {obj} and gave away as many as {R} has.",
        "{P} started with {a} {obj} and lost as many as {R} has.",
        "{P} began with {a} {obj}, then donated a number equal to what {R} has.",
    ],
    ("-", "NN"): [
        "{P} has as many {obj} as {Q} has more than {R}.",
        "{P} has the difference between the {obj} of {Q} and {R}.",
        "The gap between the {obj} of {Q} and those of {R} is what {P} holds.",
    ],
    ("*", "LL"): [
        "{P} has {a} boxes with {b} {obj} in each.",
        "{P} buys {a} packs of {b} {obj}.",
        "{P} stacks {a} crates, each crate holding {b} {obj}.",
    ],
    ("*", "NL"): [
        "{P} has {b} times as many {obj} as {Q}.",
        "{P} owns {b} times the number of {obj} that {Q} has.",
        "Multiply the {obj} of {Q} by {b} to get what {P} holds.",
    ],
    ("/", "LL"): [
        "{P} splits {a} {obj} into {b} equal piles and keeps one pile.",
        "{P} gets one of {b} equal shares of {a} {obj}.",
        "{a} {obj} are divided evenly between {b} kids, and {P} is one of them.",
    ],
    ("/", "NL"): [
        "{P} gets one of {b} equal shares of the {obj} of {Q}.",
        "{P} has as many {obj} as {Q} has, divided by {b}.",
        "If the {obj} of {Q} were split into {b} equal groups, {P} would hold exactly one group.",
    ],
}
QUESTIONS = [
    "How many {obj} does {P} have?",
    "How many {obj} does {P} have in the end?",
    "What is the number of {obj} that {P} ends up with?",
]
DISTRACTORS = ["{X} has {m} {other}.", "{X} also owns {m} {obj}."]


@dataclass(frozen=True)
class SuiteSpec:
    """How one split is drawn. Defaults equal the schema's `data.synthetic` (a test checks it)."""

    n: int = 500
    min_ops: int = 1
    max_ops: int = 3
    max_quantity: int = 10  # leaves of + and - (and the left side of * and /)
    max_operand: int = 5  # multipliers and divisors are 2..max_operand
    max_result: int = 60  # every intermediate result stays in 1..max_result
    varied_phrasing: float = 0.0  # chance that a sentence uses a held-out template
    distractor: float = 0.0  # chance of one irrelevant sentence
    question_first: float = 0.0  # chance that the question opens the problem

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if self.max_ops > 8:
            raise ValueError(f"max_ops is at most 8 (label enumeration), got {self.max_ops}")
        if self.max_quantity < 2 or self.max_operand < 2 or self.max_result < 4:
            raise ValueError("max_quantity and max_operand must be >= 2, max_result >= 4")
        for name in ("varied_phrasing", "distractor", "question_first"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")

    @classmethod
    def from_dict(cls, values: dict) -> SuiteSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown suite setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)


@dataclass
class Node:
    """A leaf (op None) or an operation over two children; `person` names an operation's result."""

    op: str | None = None
    left: Node | None = None
    right: Node | None = None
    value: int = 0
    person: str = ""
    children_kinds: str = field(default="", repr=False)

    @property
    def is_leaf(self) -> bool:
        return self.op is None


class _Retry(Exception):
    pass


def _shape(rng: random.Random, k: int) -> Node:
    """A random binary tree with k operations (k internal nodes)."""
    if k == 0:
        return Node()
    left_k = rng.randint(0, k - 1)
    return Node(op="?", left=_shape(rng, left_k), right=_shape(rng, k - 1 - left_k))


def _assign(rng: random.Random, node: Node, spec: SuiteSpec) -> None:
    """Choose the operation and leaf values bottom-up so that every result is a positive integer."""
    if node.is_leaf:
        return
    _assign(rng, node.left, spec)
    _assign(rng, node.right, spec)
    left_leaf, right_leaf = node.left.is_leaf, node.right.is_leaf
    ops = ["+", "-"] if not (left_leaf or right_leaf) else ["+", "-", "*", "/"]
    op = rng.choice(ops)
    if op in "*/" and not right_leaf:  # the small operand (multiplier, divisor) is the right leaf
        node.left, node.right = node.right, node.left
        left_leaf, right_leaf = right_leaf, left_leaf
    if op in "+*" and left_leaf and not right_leaf:  # commutative: keep the person on the left
        node.left, node.right = node.right, node.left
        left_leaf, right_leaf = right_leaf, left_leaf
    q, m = spec.max_quantity, spec.max_operand
    a, b = node.left, node.right
    if op == "+":
        if left_leaf:
            a.value = rng.randint(1, q)
        if right_leaf:
            b.value = rng.randint(1, q)
        value = a.value + b.value
    elif op == "-":
        if not left_leaf and not right_leaf and a.value < b.value:
            node.left, node.right = b, a
            a, b = b, a
        if left_leaf and right_leaf:
            a.value = rng.randint(2, q)
        elif left_leaf:
            a.value = b.value + rng.randint(1, q)
        if right_leaf:
            if a.value < 2:
                raise _Retry
            b.value = rng.randint(1, min(q, a.value - 1))
        value = a.value - b.value
    elif op == "*":
        if left_leaf:
            a.value = rng.randint(2, q)
        b.value = rng.randint(2, m)
        value = a.value * b.value
    else:  # exact division
        if left_leaf:
            b.value = rng.randint(2, m)
            a.value = b.value * rng.randint(1, max(1, q // b.value))
        else:
            divisors = [d for d in range(2, m + 1) if a.value % d == 0]
            if not divisors:
                raise _Retry
            b.value = rng.choice(divisors)
        value = a.value // b.value
    if not 1 <= value <= spec.max_result:
        raise _Retry
    node.op, node.value = op, value
    node.children_kinds = ("L" if left_leaf else "N") + ("L" if right_leaf else "N")


def _operations(root: Node) -> list[Node]:
    """Operations in post-order (children before parents)."""
    if root.is_leaf:
        return []
    return _operations(root.left) + _operations(root.right) + [root]


def _topological_orders(ops: list[Node]) -> Iterator[list[Node]]:
    """Every order of the operations in which each comes after the operations it uses."""
    deps = {id(n): {id(c) for c in (n.left, n.right) if not c.is_leaf} for n in ops}

    def extend(order: list[Node], done: set[int]) -> Iterator[list[Node]]:
        if len(order) == len(ops):
            yield list(order)
            return
        for n in ops:
            if id(n) not in done and deps[id(n)] <= done:
                order.append(n)
                done.add(id(n))
                yield from extend(order, done)
                order.pop()
                done.discard(id(n))

    yield from extend([], set())


def equation(node: Node, swap: bool = False) -> str:
    x, y = (node.right, node.left) if swap else (node.left, node.right)
    return f"<<{x.value}{node.op}{y.value}={node.value}>>"


def all_labels(root: Node) -> list[list[str]]:
    """Every distinct equivalent CoT label of a problem (topological orders x commutative swaps)."""
    ops = _operations(root)
    labels: dict[tuple[str, ...], None] = {}
    for order in _topological_orders(ops):
        choices = [[False, True] if n.op in "+*" else [False] for n in order]
        for swaps in itertools.product(*choices):
            labels[tuple(equation(n, s) for n, s in zip(order, swaps))] = None
    return [list(label) for label in labels]


def _render(rng: random.Random, root: Node, spec: SuiteSpec) -> str:
    ops = _operations(root)
    names = rng.sample(NAMES, len(ops) + 1)
    for node, name in zip(ops, names):
        node.person = name
    obj = rng.choice(OBJECTS)
    text_order = rng.choice(list(_topological_orders(ops))) if len(ops) <= 5 else ops
    sentences = []
    for node in text_order:
        templates = TEMPLATES[(node.op, node.children_kinds)]
        held_out = rng.random() < spec.varied_phrasing
        template = templates[-1] if held_out else rng.choice(templates[:-1])
        sentences.append(
            template.format(
                P=node.person,
                Q=node.left.person,
                R=node.right.person,
                a=node.left.value,
                b=node.right.value,
                obj=obj,
            )
        )
    if rng.random() < spec.distractor:
        distractor = rng.choice(DISTRACTORS).format(
            X=names[-1], m=rng.randint(2, spec.max_quantity), other=rng.choice(OTHER_OBJECTS), obj=obj
        )
        sentences.insert(rng.randint(0, len(sentences)), distractor)
    question_pool = QUESTIONS if spec.varied_phrasing > 0 else QUESTIONS[:-1]
    question = rng.choice(question_pool).format(obj=obj, P=root.person)
    if rng.random() < spec.question_first:
        return " ".join([question] + sentences)
    return " ".join(sentences + [question])


def make_problem(rng: random.Random, spec: SuiteSpec) -> tuple[str, Node]:
    """One problem: (question text, operation tree)."""
    while True:
        k = rng.randint(spec.min_ops, spec.max_ops)
        root = _shape(rng, k)
        try:
            _assign(rng, root, spec)
        except _Retry:
            continue
        return _render(rng, root, spec), root


def twin_name(suite: str) -> str:
    """The name of a suite's validation twin (its own random stream, so another draw of the same settings)."""
    return f"{suite}-twin"


def generate_split(name: str, spec: SuiteSpec, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """`spec.n` records of one split; questions whose normalised text is in `exclude` are redrawn.

    Same (name, spec, seed, exclude) -> same records, byte for byte.
    """
    rng = random.Random(f"atp-synthetic/{seed}/{name}")
    exclude = exclude or set()
    records = []
    attempts = 0
    while len(records) < spec.n:
        attempts += 1
        if attempts > 50 * spec.n + 1000:
            raise RuntimeError(f"split {name!r}: could not draw {spec.n} new questions; widen its settings")
        question, root = make_problem(rng, spec)
        if normalise_question(question) in exclude:
            continue
        labels = all_labels(root)
        records.append(
            {
                "id": f"{name}-{len(records):06d}",
                "question": question,
                "steps": rng.choice(labels),
                "answer": str(root.value),
                "source": f"synthetic/{name}",
                "n_ops": len(labels[0]),
                "n_labels": len(labels),
            }
        )
    return records
