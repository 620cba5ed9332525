"""The embedded generator: determinism, label equivalence, suites, leakage."""

import json
import random
import re

from atp.data.synthetic import TEMPLATES, SuiteSpec, all_labels, generate_split, make_problem
from atp.text import normalise_question, parse_equation


def _check_label(question: str, steps: list[str], answer: str) -> None:
    """A label is a valid computation: true equations over question numbers or earlier results, ending at the answer."""
    available = [int(n) for n in re.findall(r"\d+", question)]
    for step in steps:
        equation = parse_equation(step)
        assert equation is not None and equation.holds(), step
        a, b = (int(x) for x in equation.operands)
        assert a in available and b in available, (step, available)
        available.append(int(equation.result))
    assert int(steps[-1].split("=")[1][:-2]) == int(answer)


def test_same_seed_same_bytes_and_other_seed_differs():
    spec = SuiteSpec(n=50)
    first = json.dumps(generate_split("train", spec, seed=3))
    assert first == json.dumps(generate_split("train", spec, seed=3))
    assert first != json.dumps(generate_split("train", spec, seed=4))


def test_every_equivalent_label_computes_the_answer():
    rng = random.Random(0)
    spec = SuiteSpec(min_ops=1, max_ops=5)
    several = 0
    for _ in range(200):
        question, root = make_problem(rng, spec)
        labels = all_labels(root)
        several += len(labels) > 1
        assert len({tuple(label) for label in labels}) == len(labels)
        for label in labels:
            _check_label(question, label, str(root.value))
    assert several > 50  # most multi-step problems have several equivalent labels


def test_record_label_is_one_of_its_equivalents():
    records = generate_split("train", SuiteSpec(n=100), seed=0)
    for r in records:
        _check_label(r["question"], r["steps"], r["answer"])
        assert len(r["steps"]) == r["n_ops"]
        assert r["n_labels"] >= 1
    assert {r["n_ops"] for r in records} == set(range(1, SuiteSpec().max_ops + 1))


def test_suites_follow_their_settings():
    easy = generate_split("easy", SuiteSpec(n=100, min_ops=1, max_ops=2), seed=0)
    assert {r["n_ops"] for r in easy} == {1, 2}
    hard = generate_split("hard", SuiteSpec(n=100, min_ops=2, max_quantity=1000, max_result=99999), seed=0)
    normal = generate_split("test", SuiteSpec(n=100), seed=0)
    biggest = lambda rs: max(int(n) for r in rs for n in re.findall(r"\d+", r["question"]))  # noqa: E731
    assert biggest(hard) > 5 * biggest(normal)
    varied = generate_split("varied", SuiteSpec(n=100, varied_phrasing=1.0, distractor=1.0, question_first=1.0), seed=0)
    held_out = [t[-1].split("{")[0] or t[-1].split("}")[1][:12] for t in TEMPLATES.values()]
    assert all(r["question"].startswith(("How many", "What is")) for r in varied)
    training = generate_split("train", SuiteSpec(n=300), seed=0)
    training_text = " ".join(r["question"] for r in training)
    assert "Compared with" not in training_text and "Multiply the" not in training_text
    assert any("Compared with" in r["question"] or "Multiply the" in r["question"] for r in varied)
    assert held_out


def test_excluded_questions_are_redrawn():
    train = generate_split("train", SuiteSpec(n=300, max_ops=1, max_quantity=5), seed=0)
    seen = {normalise_question(r["question"]) for r in train}
    test = generate_split("test", SuiteSpec(n=50, max_ops=1, max_quantity=5), seed=0, exclude=seen)
    assert not seen & {normalise_question(r["question"]) for r in test}


def test_suite_spec_defaults_equal_the_schema_defaults():
    from dataclasses import asdict

    from atp.config import resolve

    assert asdict(SuiteSpec()) == resolve({})["data"]["synthetic"]


def test_an_rl_split_is_drawn_apart_from_train_val_and_the_suites_and_changes_nothing_else(tmp_path):
    from atp.stages.prepare_data import build_splits
    from atp.stages.rl import rl_prompts
    from atp.text import normalise_question
    from conftest import tiny_config

    suites = {"test": {"source": "synthetic", "n": 30}}
    plain, _, _ = build_splits(tiny_config(data={"suites": suites}))
    with_rl, _, _ = build_splits(tiny_config(data={"suites": suites, "rl": {"source": "synthetic", "n": 25, "min_ops": 3}}))
    assert "rl" not in plain and len(with_rl["rl"]) == 25 and all(len(r["steps"]) >= 3 for r in with_rl["rl"])
    assert with_rl["train"] == plain["train"] and with_rl["val"] == plain["val"]  # train and val do not move
    questions = lambda name: {normalise_question(r["question"]) for r in with_rl[name]}  # noqa: E731
    assert not questions("rl") & (questions("train") | questions("val") | questions("test"))
    (tmp_path / "train.jsonl").write_text("")
    assert rl_prompts(tmp_path).name == "train.jsonl"
    (tmp_path / "rl.jsonl").write_text("")
    assert rl_prompts(tmp_path).name == "rl.jsonl"
