"""The AST sanitizer: what the entry point needs stays, script code goes, in both completion shapes."""

from __future__ import annotations

import pytest

from bench.scoring.sanitize import longest_parseable_prefix, parses, reachable_names, sanitize, split_lines

PROMPT = 'import math\n\n\ndef area(r: float) -> float:\n    """Area of a circle of radius r."""\n'


def test_full_definition_keeps_imports_reachable_helpers_and_globals():
    code = ("import os\n\nSCALE = 2\nUNUSED = 3\n\n\ndef unused():\n    return 0\n\n\n"
            "def square(x):\n    return x * x\n\n\n"
            "def area(r):\n    return math.pi * square(r) * SCALE / 2\n\n\n"
            'print(area(1))\nassert area(0) == 0\nif __name__ == "__main__":\n    area(float(input()))\n')
    out = sanitize(code, "area", PROMPT)
    assert out == ("import os\n\nSCALE = 2\n\ndef square(x):\n    return x * x\n\n"
                   "def area(r):\n    return math.pi * square(r) * SCALE / 2\n")


def test_body_shape_keeps_the_body_and_helpers_after_it():
    code = "    return math.pi * sq(r)\n\n\ndef sq(x):\n    return x * x\n\n\nprint(area(2))\nmain()\n"
    assert sanitize(code, "area", PROMPT) == "    return math.pi * sq(r)\n\ndef sq(x):\n    return x * x\n"


def test_helpers_are_followed_transitively_and_classes_count():
    code = ("class Circle:\n    def __init__(self, r):\n        self.r = r\n\n"
            "def make(r):\n    return Circle(r)\n\n"
            "def area(r):\n    return math.pi * make(r).r ** 2\n")
    out = sanitize(code, "area", PROMPT)
    assert "class Circle" in out and "def make" in out


def test_decorators_stay_with_their_function():
    code = "from functools import lru_cache\n\n@lru_cache(None)\ndef area(r):\n    return math.pi * r * r\n"
    assert sanitize(code, "area", PROMPT).startswith("from functools import lru_cache\n\n@lru_cache(None)\ndef area")


def test_trailing_prose_is_cut_to_the_longest_parseable_prefix():
    code = "    return math.pi * r * r\n\nThis uses the formula for the area of a circle.\n"
    assert sanitize(code, "area", PROMPT) == "    return math.pi * r * r\n"


def test_code_that_never_parses_comes_back_unchanged():
    assert sanitize("I can't do that.", "area", PROMPT) == "I can't do that."


def test_a_program_without_prompt_works_too():
    code = "def f(x):\n    return g(x)\n\ndef g(x):\n    return x\n\nprint(f(1))\n"
    assert sanitize(code, "f") == "def f(x):\n    return g(x)\n\ndef g(x):\n    return x\n"


def test_the_result_continues_the_prompt_and_parses():
    code = "    return math.pi * r * r\n\nif __name__ == '__main__':\n    print(area(1))\n"
    assert parses(PROMPT + sanitize(code, "area", PROMPT))


@pytest.mark.parametrize("code, prefix", [
    ("x = 1\ny = 2\n", "x = 1\ny = 2\n"),
    ("x = 1\nHere is why:\n", "x = 1\n"),
    ("x = 1\n\n\nthen prose\n", "x = 1\n"),
    ("def f(\n", None),
])
def test_longest_parseable_prefix(code, prefix):
    assert longest_parseable_prefix(code) == prefix


def test_longest_parseable_prefix_reads_after_the_prompt():
    assert longest_parseable_prefix("    return 1\nprose here\n", "def f():\n") == "    return 1\n"
    assert longest_parseable_prefix("    return 1\n") is None  # a bare body does not parse on its own


def test_reachable_names_follow_the_dependency_graph():
    source = "A = 1\ndef f():\n    return g() + A\ndef g():\n    return 2\ndef h():\n    return f()\n"
    assert reachable_names(source, "f") == {"f", "g", "A"}


def test_a_local_does_not_pull_in_a_demo_global_of_the_same_name():
    code = ("def total(xs):\n    result = 0\n    for x in xs:\n        result += x\n    return result\n\n"
            "result = total(map(int, input().split()))\nprint(result)\n")
    assert sanitize(code, "total") == "def total(xs):\n    result = 0\n    for x in xs:\n        result += x\n" \
                                      "    return result\n"


def test_globals_read_by_nested_scopes_decorators_and_defaults_are_kept():
    code = ("import functools\nLIMIT = 3\nSTEP = 1\nBASE = 0\n\ndef deco(f):\n    return f\n\n"
            "@deco\ndef walk(n, start=BASE):\n    return [i + STEP for i in range(start, min(n, LIMIT))]\n")
    out = sanitize(code, "walk")
    for name in ("LIMIT = 3", "STEP = 1", "BASE = 0", "def deco"):
        assert name in out


def test_statements_are_cut_exactly_even_on_a_shared_line():
    code = "import sys; sys.exit(0)\n@ staticmethod_like\ndef f():  # ünïcode comment\n    return 'é' ; print('x')\n"
    out = sanitize("def staticmethod_like(g):\n    return g\n" + code, "f")
    assert "sys.exit" not in out
    assert out.endswith("@ staticmethod_like\ndef f():  # ünïcode comment\n    return 'é' ; print('x')\n")
    assert out.startswith("def staticmethod_like(g):\n    return g\n\nimport sys\n\n")


def test_future_imports_are_dropped_because_the_prompt_comes_first():
    out = sanitize("from __future__ import annotations\n\ndef f() -> int:\n    return 1\n", "f", "import os\n")
    assert "__future__" not in out and parses("import os\n" + out)


def test_lines_split_where_python_splits():
    assert split_lines("a\r\nb\rc\nd\x0ce\n") == ["a\r\n", "b\r", "c\n", "d\x0ce\n"]
    assert sanitize("def f():\r\n    return 1\r\nprint(f())\r\n", "f") == "def f():\r\n    return 1\n"


def test_augmented_assignment_to_a_kept_global_is_kept():
    code = ('VOWELS = "aeiou"\nVOWELS += VOWELS.upper()\n\n'
            "def count(s):\n    return sum(c in VOWELS for c in s)\n\nprint(count('HeLLo'))\n")
    out = sanitize(code, "count")
    assert "VOWELS += VOWELS.upper()" in out and "print(" not in out


def test_a_loop_filling_a_kept_global_is_kept_and_a_demo_loop_is_not():
    code = ("SQUARES = []\nfor i in range(10):\n    SQUARES.append(i * i)\n\n"
            "TABLE = {}\nfor i in range(3):\n    TABLE[i] = i + 1\n\n"
            "def lookup(n):\n    return SQUARES[n] + TABLE.get(n, 0)\n\n"
            "for case in (1, 2):\n    print(lookup(case))\n")
    out = sanitize(code, "lookup")
    assert "SQUARES.append(i * i)" in out and "TABLE[i] = i + 1" in out
    assert "print(" not in out
