"""Math answers: pull the final answer out of a completion, normalise it, and decide equality with SymPy.

    "... so the total is \\boxed{\\frac{3}{4}}."  --extract-->  "\\frac{3}{4}"  --normalise-->  "\\frac{3}{4}"
        --to_sympy-->  Rational(3, 4)  ==  parse("0.75")  ->  equal

Extraction: the LAST `\\boxed{...}` (or `\\fbox{...}`, braces balanced), else the text after a GSM8K `#### `
marker, else the last number in the text. Normalisation drops what does not change the value: `$`, `\\left`,
`\\right`, `\\!`, spaces, `\\text{units}` after a number, a trailing unit word ("12 dollars"), `^\\circ`, `\\%`,
thousands separators ("1,234"), a leading "x =". Intervals `(a, b]` compare endpoint by endpoint and bracket by
bracket; comma-separated lists compare element by element in order.

Safety: completions are model output, so SymPy never `eval`s them raw: the LaTeX is rewritten into a small
arithmetic language (digits, operators, parentheses, `sqrt`, `pi`, `oo`, single-letter variables), anything else
is compared as a normalised string, and huge powers are refused before SymPy sees them.
"""

from __future__ import annotations

import re

__all__ = ["extract_answer", "normalize_answer", "answers_equal", "reference_answer"]

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3})((?:,\d{3})+)(?![\d])")
# "12 dollars", "5 cm", "7apples": a unit word after a number; one letter ("2x") or a name SymPy knows stays
_UNIT_WORD = re.compile(r"^(-?[\d.,/]+)(?:\s+([a-zA-Z]{2,}[a-zA-Z\s.]*)|([a-zA-Z]{3,}[a-zA-Z\s.]*))$")
_SAFE = re.compile(r"^[0-9a-zA-Z+\-*/().\s]*$")
_ALLOWED_NAMES = {"sqrt", "pi", "oo"}


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The contents of the brace group opening at text[start] ('{'), and the index after its '}'."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None


def last_boxed(text: str) -> str | None:
    """The contents of the last `\\boxed{...}` / `\\fbox{...}` (braces balanced), or None."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*", text):
        got = _braced(text, m.end())
        if got is not None:
            best = got[0]
        elif text[m.end() : m.end() + 1].strip():  # "\boxed 5": one token without braces
            best = text[m.end() :].split()[0].rstrip("$.")
    return best


def extract_answer(text: str) -> str | None:
    """The final answer in a completion: last \\boxed{}, else after `#### `, else the last number; None if none."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        if tail:
            return tail.splitlines()[0].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def reference_answer(answer: str) -> str:
    """A record's reference answer: a bare answer as it is; a worked solution (\\boxed{}, ####) reduced to it."""
    boxed = last_boxed(answer)
    if boxed is not None:
        return boxed
    if "####" in answer:
        return answer.rsplit("####", 1)[1].strip()
    return answer.strip()


def _strip_text_units(s: str) -> str:
    """`5\\text{ cm}` -> `5`; `\\text{(A)}` alone -> `(A)`."""
    pieces = re.split(r"\\(?:text|mbox|mathrm|textbf|mathbf)\s*", s)
    if len(pieces) == 1:
        return s
    kept, words = [pieces[0]], []
    for piece in pieces[1:]:
        got = _braced(piece, 0)
        if got is None:
            kept.append(piece)
            continue
        words.append(got[0])
        kept.append(piece[got[1] :])
    rest = "".join(kept).strip()
    return rest if rest else " ".join(words)


def normalize_answer(answer: str) -> str:
    """A canonical string form of an answer (see the module docstring); the SymPy step starts from it."""
    s = answer.strip()
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(?:left|right|big|Big|bigl|bigr|displaystyle)\b", "", s)
    s = re.sub(r"\\[!,;: ]", "", s)  # LaTeX spacing
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _strip_text_units(s)
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5" -> "5"
    s = s.strip().rstrip(".").strip()
    s = _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s) if not _is_interval(s) else s
    m = _UNIT_WORD.match(s)
    if m and (m.group(2) or m.group(3)).split()[0] not in _ALLOWED_NAMES:
        s = m.group(1)
    return re.sub(r"\s+", " ", s).strip()


def _is_interval(s: str) -> bool:
    return len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and len(_split_top(s[1:-1])) == 2


def _split_top(s: str) -> list[str]:
    """Split at commas that are not inside (), [] or {}."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _latex_to_expr(s: str) -> str | None:
    """Rewrite LaTeX arithmetic into the small language SymPy parses here; None if it holds anything else."""
    s = s.replace("\\infty", "oo").replace("\\pi", "pi").replace("\\cdot", "*").replace("\\times", "*")
    s = s.replace("\\div", "/")
    for _ in range(20):  # innermost first is not needed: each pass rewrites the leftmost command
        m = re.search(r"\\(frac|sqrt)\s*", s)
        if m is None:
            break
        i = m.end()
        root = None
        if m.group(1) == "sqrt" and s[i : i + 1] == "[":
            j = s.find("]", i)
            if j < 0:
                return None
            root, i = s[i + 1 : j], j + 1
        args = []
        for _k in range(2 if m.group(1) == "frac" else 1):
            got = _braced(s, i)
            if got is None:  # \frac12, \sqrt2: single-character arguments
                if i >= len(s) or not s[i].isalnum():
                    return None
                got = (s[i], i + 1)
            args.append(got[0])
            i = got[1]
        if m.group(1) == "frac":
            new = f"(({args[0]})/({args[1]}))"
        elif root is not None:
            new = f"(({args[0]})**(1/({root})))"
        else:
            new = f"sqrt({args[0]})"
        s = s[: m.start()] + new + s[i:]
    s = s.replace("{", "(").replace("}", ")").replace("^", "**")
    if "\\" in s or not _SAFE.match(s):
        return None
    if any(len(w) > 1 and w not in _ALLOWED_NAMES for w in re.findall(r"[a-zA-Z]+", s)):
        return None
    if s.count("**") > 2 or any(len(e) > 3 for e in re.findall(r"\*\*\s*\(*\s*(\d+)", s)):
        return None  # 9**9**9 would not finish
    return s


def _to_sympy(s: str):  # -> sympy.Expr | None
    expr = _latex_to_expr(s)
    if expr is None or not expr.strip() or len(expr) > 200:
        return None
    from sympy.parsing.sympy_parser import (
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    try:
        return parse_expr(expr, transformations=(*standard_transformations, implicit_multiplication_application),
                          evaluate=True)
    except Exception:  # SymPy raises many kinds for malformed input: all mean "not an expression"
        return None


def _values_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    x, y = _to_sympy(a), _to_sympy(b)
    if x is None or y is None:
        return a.replace(" ", "").lower() == b.replace(" ", "").lower()
    import sympy

    try:
        if x.is_number and y.is_number:
            if x.has(sympy.oo, -sympy.oo, sympy.zoo) or y.has(sympy.oo, -sympy.oo, sympy.zoo):
                return bool(x == y)
            fx, fy = complex(sympy.N(x, 30)), complex(sympy.N(y, 30))
            return abs(fx - fy) <= 1e-6 * max(1.0, abs(fy))
        return bool(sympy.simplify(x - y) == 0)
    except Exception:  # e.g. comparing a relation with a number
        return False


def answers_equal(predicted: str, reference: str) -> bool:
    """True when two (already extracted) answers denote the same value, interval or list."""
    a, b = normalize_answer(predicted), normalize_answer(reference)
    if a == b:
        return True
    if _is_interval(a) or _is_interval(b):
        if not (_is_interval(a) and _is_interval(b)) or a[0] != b[0] or a[-1] != b[-1]:
            return False
        return all(_values_equal(p, q) for p, q in zip(_split_top(a[1:-1]), _split_top(b[1:-1])))
    pa, pb = _split_top(a), _split_top(b)
    if len(pa) > 1 or len(pb) > 1:
        return len(pa) == len(pb) and all(_values_equal(p, q) for p, q in zip(pa, pb))
    return _values_equal(a, b)
