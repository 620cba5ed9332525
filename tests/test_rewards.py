"""Rewards of the RL stage: example-based tests of each pure function (docs/method.md, section 6)."""

from __future__ import annotations

import pytest

from atp.rewards import REWARDS, RewardConfig, coherence, correct, format_reward, step_coherence, total
from atp.text import parse_equation


def test_rewards_are_registered_by_name():
    assert {"correct", "format", "coherence"} <= set(REWARDS)


def test_correct_compares_the_parsed_answer_by_value():
    assert correct(["### 12", "### 12.0", "### 1,2", "### 1", "12", "### 12 apples"], answers=["12"] * 6) == [1, 1, 1, 0, 0, 1]


def test_format_needs_the_marker_followed_by_a_number():
    assert format_reward(["### 7", "###7", "### -3.5", "###", "7", "### seven", ""]) == [1, 1, 1, 0, 0, 0, 0]


def test_a_result_1_is_not_used_by_a_later_step_containing_12():
    steps = ["<<3-2=1>>", "<<12+4=16>>"]
    # strict: "1" is not among the whole-number operands {12, 4}; the last step matches the answer.
    assert step_coherence(steps, "16", "strict") == 0.5
    # the paper's substring rule counts it as used.
    assert step_coherence(steps, "16", "substring") == 1.0


def test_results_are_compared_by_value():
    assert step_coherence(["<<14/2=7>>", "<<7.0*2=14>>"], "14") == 1.0


def test_an_unparsable_step_is_incoherent_by_default_and_coherent_under_the_paper_rule():
    steps = ["<<2+3=5>>", "<<5 times 2>>", "<<5*2=10>>"]
    assert parse_equation(steps[1]) is None
    assert step_coherence(steps, "10", "strict") == pytest.approx(2 / 3)
    assert step_coherence(steps, "10", "substring") == 1.0
    assert step_coherence(["garbage"], "3", "strict") == 0.0


def test_no_steps_scores_one():
    assert step_coherence([], "5") == 1.0
    assert coherence(["### 5"], steps=[[]]) == [1.0]


def test_the_last_step_counts_only_when_its_result_is_the_final_answer():
    steps = ["<<2+3=5>>", "<<5*2=10>>"]
    assert coherence(["### 10", "### 11", "no answer"], steps=[steps] * 3) == [1.0, 0.5, 0.5]


def test_an_unused_middle_step_lowers_coherence():
    assert step_coherence(["<<2+3=5>>", "<<4*2=8>>", "<<8+1=9>>"], "9") == pytest.approx(2 / 3)


def test_total_follows_the_paper_weights_and_gates_coherence_by_correctness():
    steps = [["<<2+3=5>>", "<<5*2=10>>"]] * 3
    out = total(["### 10", "### 9", "nothing"], ["10"] * 3, steps, RewardConfig())
    assert out["total"] == [pytest.approx(1.6), pytest.approx(0.5), 0.0]
    answer_only = total(["### 10"], ["10"], steps[:1], RewardConfig(coherence=0.0))
    assert answer_only["total"] == [pytest.approx(1.5)]


def test_the_coherence_only_reward_reads_no_gold_answer():
    cfg = RewardConfig(correct=0.0, format=0.5, coherence=1.0, coherence_times_correct=False)
    assert not cfg.needs_gold
    out = total(["### 10", "### 9"], None, [["<<2+3=5>>", "<<5*2=10>>"]] * 2, cfg)
    assert out["total"] == [pytest.approx(1.5), pytest.approx(1.0)]
    with pytest.raises(ValueError, match="gold"):
        total(["### 10"], None, [[]], RewardConfig())


def test_an_unknown_coherence_rule_is_refused():
    with pytest.raises(ValueError, match="coherence_rule"):
        RewardConfig(coherence_rule="fuzzy")


@pytest.mark.parametrize(
    "steps, answer, strict, substring",
    [
        # the paper's code tests the last result as a substring of the predicted answer: 7 is in 17
        (["<<2*3=7>>"], "17", 0.0, 1.0),
        (["<<2*3=6>>"], "6", 1.0, 1.0),
        (["<<2*3=6>>"], None, 0.0, 0.0),
        # a truncated or wrapped step is no equation under the strict rule; the paper's rule reads its raw result
        (["<<3*4=12", "<<12+1=13>>"], "13", 0.5, 1.0),
        (["<<3*4=12>>junk", "<<12+1=13>>"], "13", 0.5, 1.0),
        (["x<<3*4=12>>", "<<12+1=13>>"], "13", 0.5, 1.0),
        # GSM8K-Aug's multi-operand and parenthesised steps: the result of step 1 is an operand of step 2
        (["<<1200-300-350=550>>", "<<(550+50)*2=1200>>"], "1200", 1.0, 1.0),
        (["<<(2+3)*4=20>>", "<<20/8=2.5>>"], "2.5", 1.0, 1.0),
        # negative and decimal results, compared by value
        (["<<3-5=-2>>", "<<-2*1.5=-3>>"], "-3.0", 1.0, 1.0),
        (["<<1,000+200=1,200>>", "<<1200-1=1199>>"], "1199", 1.0, 0.5),
    ],
)
def test_coherence_rules_on_a_table_of_steps(steps, answer, strict, substring):
    assert step_coherence(steps, answer, "strict") == pytest.approx(strict)
    assert step_coherence(steps, answer, "substring") == pytest.approx(substring)
