import pytest

from atp.text import canonical_number, equation_holds, numbers_equal, parse_answer, parse_equation


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("<<2+3=5>>\n### 5", "5"),
        ("### 1,250 apples and more text", "1250"),
        ("###42", "42"),
        ("### -3", "-3"),
        ("### 2.50", "2.5"),
        ("### 7.0", "7"),
        ("first ### 3 then ### 4", "3"),
        ("no marker here 42", None),
        ("### no number", None),
        ("", None),
    ],
)
def test_parse_answer(generation, expected):
    assert parse_answer(generation) == expected


def test_canonical_number():
    assert canonical_number("1,000") == "1000"
    assert canonical_number(3.0) == "3"
    assert canonical_number("0.500") == "0.5"
    assert canonical_number(-0.0) == "0"
    with pytest.raises(ValueError):
        canonical_number("twelve")
    with pytest.raises(ValueError):
        canonical_number(float("nan"))


def test_numbers_equal_by_value():
    assert numbers_equal("7", "7.0")
    assert numbers_equal("1,000", "1000")
    assert not numbers_equal("1", "12")
    assert not numbers_equal("x", "1")


def test_equations():
    assert parse_equation("<<16-3=13>>").operands == ("16", "3") and parse_equation("<<16-3=13>>").result == "13"
    assert parse_equation("<<2x3=6>>").holds()
    assert parse_equation("<<1+2+3=6>>").operands == ("1", "2", "3")
    assert equation_holds("<<12/4=3>>")
    assert not equation_holds("<<12/5=3>>")
    assert not equation_holds("<<5/0=0>>")
    assert not equation_holds("<<garbage>>")


@pytest.mark.parametrize(
    "step, operands, result, holds",
    [
        ("<<1200-300-350=550>>", ("1200", "300", "350"), "550", True),
        ("<<(2+3)*4=20>>", ("2", "3", "4"), "20", True),
        ("<<2+3*4=14>>", ("2", "3", "4"), "14", True),  # precedence
        ("<<(2+3)*4=14>>", ("2", "3", "4"), "14", False),
        ("<<1,200*2=2,400>>", ("1200", "2"), "2400", True),
        ("<<0.5*8=4>>", ("0.5", "8"), "4", True),
        ("<<-3+5=2>>", ("-3", "5"), "2", True),
        ("<<3*-2=-6>>", ("3", "-2"), "-6", True),
        ("<<10-(2-5)=13>>", ("10", "2", "5"), "13", True),
        ("<<10/3=3.33>>", ("10", "3"), "3.33", True),  # a rounded result
        ("<<12/5=2>>", ("12", "5"), "2", False),  # rounding is read only from a result with decimals
        ("<<5/0=0>>", ("5", "0"), "0", False),
        ("<< 3 * 4 = 12 >>", ("3", "4"), "12", True),
    ],
)
def test_one_parser_reads_gsm8k_aug_steps(step, operands, result, holds):
    equation = parse_equation(step)
    assert equation is not None and equation.operands == operands and equation.result == result
    assert equation.holds() is holds and equation_holds(step) is holds


@pytest.mark.parametrize(
    "step",
    [
        "<<3*4=12",
        "<<3*4=12>>junk",
        "x<<3*4=12>>",
        "<<3*4>>",
        "<<3*4=x>>",
        "<<3*(4=12>>",
        "<<3+4)=7>>",
        "<<3+=7>>",
        "<<=7>>",
        "<<>>",
        "<<import os=1>>",
    ],
)
def test_what_is_not_an_equation(step):
    assert parse_equation(step) is None and not equation_holds(step)
