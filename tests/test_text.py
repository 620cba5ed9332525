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
    assert parse_equation("<<16-3=13>>") == ("16", "-", "3", "13")
    assert parse_equation("<<2x3=6>>") == ("2", "*", "3", "6")
    assert parse_equation("<<1+2+3=6>>") is None
    assert equation_holds("<<12/4=3>>")
    assert not equation_holds("<<12/5=3>>")
    assert not equation_holds("<<5/0=0>>")
    assert not equation_holds("<<garbage>>")
