"""Verifiers: the math verifier against a table of equivalent and different answers written here; exact, regex
and Python verifiers; a raising verifier costs one record its reward, never the run; GSM8K/MATH converters on
hand-made samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratchlm.errors import ScratchlmError
from scratchlm.rl.mathanswer import answers_equal, extract_answer
from scratchlm.rl.records import load_prompt_records, prompt_messages, to_prompt_record
from scratchlm.rl.verifiers import get_verifier, safe_reward

EQUAL = [
    # fractions and decimals
    ("\\frac{1}{2}", "0.5"),
    ("\\dfrac{3}{4}", "3/4"),
    ("\\frac12", "0.50"),
    ("\\tfrac{6}{8}", "\\frac{3}{4}"),
    ("-\\frac{2}{3}", "\\frac{-2}{3}"),
    ("1.25", "5/4"),
    (".5", "1/2"),
    # roots
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2"),
    ("\\sqrt[3]{27}", "3"),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"),
    # intervals
    ("(1, 2]", "(1,2]"),
    ("[0, \\infty)", "[0,\\infty)"),
    ("(-\\infty, \\frac{1}{2})", "(-\\infty, 0.5)"),
    # units and decoration
    ("5\\text{ cm}", "5"),
    ("12 dollars", "12"),
    ("7apples", "7"),
    ("\\$18", "18"),
    ("90^\\circ", "90"),
    ("50\\%", "50"),
    ("x = 3", "3"),
    ("\\left( 3 \\right)", "3"),
    # thousands separators
    ("1,234", "1234"),
    ("1,000,000", "10^6"),
    ("\\$1,200.50", "1200.5"),
    # expressions
    ("2x+1", "1+2x"),
    ("\\pi/2", "\\frac{\\pi}{2}"),
    ("2^{10}", "1024"),
    ("3, 5", "3,5"),
]

DIFFERENT = [
    ("\\frac{1}{2}", "0.51"),
    ("0.333", "\\frac{1}{3}"),  # a rounded decimal is not the fraction
    ("\\sqrt{8}", "2\\sqrt{3}"),
    ("3", "-3"),
    ("(1, 2]", "[1, 2]"),  # the bracket decides
    ("(1, 2)", "(1, 3)"),
    ("[0, \\infty)", "(0, \\infty)"),
    ("5\\text{ cm}", "6"),
    ("1,234", "1235"),
    ("1,234", "1.234"),
    ("2x+1", "2x-1"),
    ("3, 5", "5, 3"),  # an ordered list
    ("3, 5", "3"),
    ("\\pi", "3.14"),
    ("2x", "2"),  # a variable is not a unit
    ("2 pi", "2"),
    ("2\\pi", "2"),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_equivalent_answers_are_equal(a: str, b: str) -> None:
    assert answers_equal(a, b) and answers_equal(b, a)


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_different_answers_are_not_equal(a: str, b: str) -> None:
    assert not answers_equal(a, b) and not answers_equal(b, a)


def test_unsafe_or_huge_input_is_compared_as_text_not_evaluated() -> None:
    assert not answers_equal("__import__('os').system('false')", "0")
    assert not answers_equal("9^{9^{9^{9}}}", "1")  # returns at once instead of computing a tower


@pytest.mark.parametrize(("text", "answer"), [
    ("so the area is \\boxed{\\frac{3}{4}} square units", "\\frac{3}{4}"),
    ("first \\boxed{1}, then correcting: \\boxed{2}.", "2"),  # the last box
    ("nested \\boxed{\\sqrt{\\frac{1}{4}}} ok", "\\sqrt{\\frac{1}{4}}"),
    ("she has 3 apples and buys 4 more, so 7 apples.", "7"),  # the last number
    ("the total is 1,250.", "1,250"),
    ("worked solution\n#### 42", "42"),
    ("no answer here", None),
])
def test_extract_answer(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


def test_math_verifier_on_records() -> None:
    v = get_verifier("math")
    assert v({"answer": "\\frac{1}{2}"}, "Thus \\boxed{0.5}.") == 1.0
    assert v({"answer": "72"}, "Natalia sold 48 + 24 = 72 clips.") == 1.0
    assert v({"answer": "72"}, "Natalia sold 48 + 24 = 70 clips.") == 0.0
    assert v({"answer": "She sold 48/2 = 24 clips.\n#### 72"}, "\\boxed{72}") == 1.0  # a raw GSM8K answer
    assert v({"answer": "7"}, "I do not know") == 0.0


def test_exact_regex_python_verifiers(tmp_path: Path) -> None:
    assert get_verifier("exact")({"answer": " Paris "}, "Paris\n") == 1.0
    assert get_verifier("exact")({"answer": "Paris"}, "paris") == 0.0
    assert get_verifier("regex:^yes\\b")({}, "yes, indeed") == 1.0
    assert get_verifier("regex:^yes\\b")({}, "well yes") == 0.0
    by_answer = get_verifier("regex:answer is {answer}\\b")
    assert by_answer({"answer": "3.5"}, "so the answer is 3.5.") == 1.0
    assert by_answer({"answer": "3.5"}, "so the answer is 3x5.") == 0.0  # the answer is escaped, "." is literal
    checks = tmp_path / "checks.py"
    checks.write_text("def short(record, completion):\n    return len(completion) <= record['limit']\n"
                      "def half(record, completion):\n    return 0.5\n")
    assert get_verifier(f"python:{checks}:short")({"limit": 3}, "abc") == 1.0
    assert get_verifier(f"python:{checks}:short")({"limit": 3}, "abcd") == 0.0
    assert get_verifier(f"python:{checks}:half")({}, "") == 0.5
    assert get_verifier("python:json:loads") is not None  # a dotted module works too


@pytest.mark.parametrize(("spec", "message"), [
    ("maths", "is unknown"),
    ("regex:(", "not a valid regular expression"),
    ("python:no_such_module_xyz:f", "cannot import no_such_module_xyz"),
    ("python:json:no_such_function", "has no function"),
    ("python:missing.py:f", "no file missing.py"),
    ("reward:/no/such/checkpoint", "no/such/checkpoint"),
])
def test_bad_specs_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(ScratchlmError, match=message) as e:
        get_verifier(spec)
    assert "\n" not in str(e.value)


def test_a_raising_verifier_costs_one_record_not_the_run(tmp_path: Path) -> None:
    checks = tmp_path / "checks.py"
    checks.write_text("def picky(record, completion):\n    return 1 / record['d']\n"
                      "def too_big(record, completion):\n    return 2\n")
    picky = get_verifier(f"python:{checks}:picky")
    results = [safe_reward(picky, {"d": d}, "x") for d in (1, 0, 2)]
    assert results[0] == (1.0, None) and results[2] == (0.5, None)
    assert results[1][0] == 0.0 and results[1][1] == "ZeroDivisionError: division by zero"
    reward, error = safe_reward(get_verifier(f"python:{checks}:too_big"), {}, "x")
    assert reward == 0.0 and "outside [0, 1]" in (error or "")
    reward, error = safe_reward(get_verifier("math"), {"question": "no answer field"}, "\\boxed{1}")
    assert reward == 0.0 and "no 'answer' field" in (error or "")


# ---- converters ---------------------------------------------------------------------------------------------------

GSM8K = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                     "May. How many clips did Natalia sell altogether in April and May?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                   "altogether in April and May.\n#### 72"}
GSM8K_BIG = {"question": "How many?", "answer": "Lots.\n#### 1,200"}
MATH = {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "level": "Level 1", "type": "Prealgebra",
        "solution": "We have $\\frac{1}{2} + \\frac{1}{4} = \\frac{2}{4} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$."}


def test_converters_on_hand_made_records(tmp_path: Path) -> None:
    g = to_prompt_record(GSM8K)
    assert g["prompt"] == GSM8K["question"] and g["answer"] == "72" and g["solution"] == GSM8K["answer"]
    assert to_prompt_record(GSM8K_BIG)["answer"] == "1200"
    m = to_prompt_record(MATH)
    assert m["prompt"] == MATH["problem"] and m["answer"] == "\\frac{3}{4}" and m["level"] == "Level 1"
    plain = to_prompt_record({"prompt": "2+2?", "answer": "4"})
    assert plain == {"prompt": "2+2?", "answer": "4"}
    assert prompt_messages(m) == [{"role": "user", "content": MATH["problem"]}]
    assert get_verifier("math")(m, "It is \\boxed{0.75}.") == 1.0
    # a JSONL file of mixed records, read the same way
    path = tmp_path / "mixed.jsonl"
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in (GSM8K, MATH, {"prompt": "hi", "answer": "x"})))
    assert [r["answer"] for r in load_prompt_records(path)] == ["72", "\\frac{3}{4}", "x"]
    assert [r["answer"] for r in load_prompt_records(path, limit=1)] == ["72"]


@pytest.mark.parametrize(("record", "fmt", "message"), [
    ({"question": "q", "answer": "no marker"}, "gsm8k", "'#### N'"),
    ({"problem": "p", "solution": "no box"}, "math", "no \\\\boxed"),
    ({"text": "?"}, "auto", "has no prompt"),
    ({"prompt": "p"}, "yaml", "--format 'yaml' is unknown"),
])
def test_converter_errors(record: dict, fmt: str, message: str) -> None:
    with pytest.raises(ScratchlmError, match=message):
        to_prompt_record(record, fmt)
