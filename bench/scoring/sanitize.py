"""AST sanitizer for generated code: keep what the entry point needs, drop what only a script would run.

Chat models write more than the function: a helper after the body, an `if __name__ == "__main__":` demo that
reads `input()`, example asserts and prints at column 0, a `main()` call. Run as-is, that extra code fails a
correct solution (input() hits a closed stdin, a demo assert is wrong, sys.exit stops the tests). evalplus
solves this with `evalplus.sanitize.sanitize` (tree-sitter); this module does the same with the standard `ast`:
keep every import, and the functions, classes and global assignments that the entry point reaches through the
name-dependency graph; drop every other top-level statement.

Both shapes the harness sees are analysed the same way, as the text that follows the prompt: a bare body continues
the prompt's signature (so it only parses with the prompt in front of it), a full definition stands after the
prompt's stub and replaces it. Code that does not parse is cut to its longest parseable prefix first, so trailing
prose or a cut-off generation does not sink the code before it.
"""

from __future__ import annotations

import ast
import re
import symtable
from collections import deque
from collections.abc import Iterable

# Top-level statements that bind a name the entry point may use; everything else at top level is script code.
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_IMPORTS = (ast.Import, ast.ImportFrom)
# Top-level code that may fill a global in place: `TABLE += ...`, a loop of `TABLE.append(...)` or `TABLE[k] = v`.
_MUTATING_STATEMENTS = (ast.AugAssign, ast.For, ast.While, ast.If, ast.With, ast.Expr)
# Method calls that change their object: a statement calling one on a global counts as building that global.
_MUTATORS = frozenset({"append", "extend", "insert", "add", "update", "setdefault", "__setitem__", "sort",
                       "reverse"})
_NEWLINE = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """Lines with their endings, split where Python's tokenizer splits (not at form feeds, as `splitlines` does)."""
    return [line for line in re.split(r"(?<=\r\n)|(?<=\r)(?!\n)|(?<=\n)", text) if line]


def parses(source: str) -> bool:
    """Whether `source` is syntactically valid Python (what `ast.parse` accepts)."""
    try:
        ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def longest_parseable_prefix(code: str, prompt: str = "") -> str | None:
    """The longest run of `code`'s leading lines that parses after `prompt`; None if not even one line does.

    Lines are dropped from the end, the way evalplus shrinks a span line by line, so trailing prose or a
    generation cut off mid-statement costs only the lines that are broken. Blank trailing lines are skipped
    as ends: they never change whether a prefix parses.
    """
    if parses(prompt + code):
        return code
    lines = split_lines(code)
    for end in range(len(lines) - 1, 0, -1):
        if not lines[end - 1].strip():
            continue
        candidate = "".join(lines[:end])
        if parses(prompt + candidate):
            return candidate
    return None


def _all_names(node: ast.AST) -> set[str]:
    """Every identifier in a statement: the over-approximation evalplus uses, here only a fallback."""
    names: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            names.add(child.id)
        elif isinstance(child, _DEFINITIONS) and child is not node:
            names.add(child.name)
    return names


def global_reads(statement_source: str, node: ast.stmt) -> set[str]:
    """Module-level names one top-level statement depends on, from the compiler's own scope analysis (`symtable`).

    Unlike a plain identifier scan, a function's local `result` does not pull in a demo's `result = f(input())`;
    names read in the statement's module scope (decorators, defaults, bases, the right-hand side) and names that
    any nested scope resolves globally count. Falls back to every identifier where `symtable` refuses the code.
    """
    try:
        table = symtable.symtable(statement_source, "<statement>", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return _all_names(node)
    names = {symbol.get_name() for symbol in table.get_symbols() if symbol.is_referenced()}
    scopes = list(table.get_children())
    while scopes:
        scope = scopes.pop()
        names.update(symbol.get_name() for symbol in scope.get_symbols() if symbol.is_global())
        scopes.extend(scope.get_children())
    return names


def _bound_names(node: ast.stmt) -> list[str]:
    """Names a kept-candidate statement defines at module level (empty for script code).

    A `try:` counts when it only imports, defines and assigns (the optional-import pattern, e.g.
    `try: from math import lcm` / `except ImportError: def lcm(...)`), through the names its branches bind.
    """
    if isinstance(node, _DEFINITIONS):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for target in node.targets for t in ast.walk(target) if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return [node.target.id]
    if isinstance(node, _IMPORTS):
        return [(alias.asname or alias.name).split(".")[0] for alias in node.names if alias.name != "*"]
    if isinstance(node, ast.Try) and _only_bindings(node):
        branches = [node.body, node.orelse, node.finalbody, *(handler.body for handler in node.handlers)]
        return [name for branch in branches for statement in branch for name in _bound_names(statement)]
    if isinstance(node, _MUTATING_STATEMENTS):
        return sorted(_mutated_globals(node))
    return []


def _base_name(target: ast.expr) -> str | None:
    """`TABLE` of `TABLE`, `TABLE[k]`, `TABLE[k][j]` or `TABLE.attr`: the global a write lands in."""
    while isinstance(target, (ast.Subscript, ast.Attribute)):
        target = target.value
    return target.id if isinstance(target, ast.Name) else None


def _mutated_globals(node: ast.stmt) -> set[str]:
    """Globals a top-level statement builds in place: augmented or item/attribute assignment, or a mutating method
    call (`VOWELS += VOWELS.upper()`, `for i in range(10): SQUARES.append(i * i)`). Plain names a loop assigns
    (its loop variable, a demo's `result = f(x)`) do not count: they are script state, not the function's data.
    A demo that only calls and prints builds nothing, so it is still dropped.
    """
    names: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.AugAssign) or (isinstance(child, ast.Assign) and child is not node):
            targets = [child.target] if isinstance(child, ast.AugAssign) else child.targets
            for target in targets:
                if isinstance(child, ast.AugAssign) or isinstance(target, (ast.Subscript, ast.Attribute)):
                    names.add(_base_name(target) or "")
        elif (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
              and child.func.attr in _MUTATORS):
            names.add(_base_name(child.func.value) or "")
    names.discard("")
    return names


def _only_bindings(node: ast.Try) -> bool:
    """Whether every statement in a `try` binds names (imports, definitions, assignments) or is `pass`."""
    branches = [node.body, node.orelse, node.finalbody, *(handler.body for handler in node.handlers)]
    allowed = (*_IMPORTS, *_DEFINITIONS, ast.Assign, ast.AnnAssign, ast.Pass)
    return all(isinstance(statement, allowed) for branch in branches for statement in branch)


class _Lines:
    """Maps `ast` positions (1-based line, UTF-8 byte column) to offsets in the text they were parsed from.

    Lines end where Python's tokenizer ends them, so offsets agree with `ast` line numbers.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0] + [match.end() for match in _NEWLINE.finditer(text)]

    def start(self, lineno: int) -> int:
        """Offset of the first character of line `lineno`."""
        return self.starts[lineno - 1]

    def offset(self, lineno: int, byte_column: int) -> int:
        """Offset of the character at `byte_column` (as `ast` counts columns: in UTF-8 bytes) of line `lineno`."""
        line_start = self.start(lineno)
        line = self.text[line_start:line_start + byte_column]  # at least as many characters as bytes needed
        return line_start + len(line.encode("utf-8")[:byte_column].decode("utf-8", "ignore"))


def _span(node: ast.stmt, lines: _Lines) -> tuple[int, int]:
    """Character span of a statement, from its first decorator (if any) to its last character."""
    first = min([node, *getattr(node, "decorator_list", [])], key=lambda n: (n.lineno, n.col_offset))
    start = lines.offset(first.lineno, first.col_offset)
    if first is not node:  # `ast` places a decorator at its expression; the statement starts at the "@"
        start = lines.text.rindex("@", lines.start(first.lineno), start)
    return start, lines.offset(node.end_lineno, node.end_col_offset)


def _reachable(graph: dict[str, set[str]], entry_point: str) -> set[str]:
    """Breadth-first closure of `entry_point` over the name graph, as evalplus walks its call graph."""
    seen, queue = {entry_point}, deque([entry_point])
    while queue:
        for name in graph.get(queue.popleft(), ()):
            if name not in seen:
                seen.add(name)
                queue.append(name)
    return seen


def _dependency_graph(text: str, statements: Iterable[ast.stmt], lines: _Lines) -> dict[str, set[str]]:
    """Each module-level name -> the names its defining statements read (a name defined twice reads both)."""
    graph: dict[str, set[str]] = {}
    for node in statements:
        bound = _bound_names(node)
        if not bound:
            continue
        start, end = _span(node, lines)
        reads = global_reads(text[start:end], node)
        for name in bound:
            graph.setdefault(name, set()).update(reads)
    return graph


def reachable_names(source: str, entry_point: str) -> set[str]:
    """Names reachable from `entry_point` through the module-level definitions of `source` (which must parse).

    A name defined twice (a stub in the prompt and the model's definition) depends on the union of both bodies.
    """
    statements = ast.parse(source).body
    return _reachable(_dependency_graph(source, statements, _Lines(source)), entry_point)


def _keep(node: ast.stmt, needed: set[str]) -> bool:
    """Imports stay (cheap, often needed), but not `__future__` ones; definitions and assignments stay if needed."""
    if isinstance(node, ast.ImportFrom) and node.module == "__future__":
        return False  # legal only at the top of a file, and the prompt comes first
    if isinstance(node, _IMPORTS):
        return True
    return any(name in needed for name in _bound_names(node))


def sanitize(code: str, entry_point: str, prompt: str = "") -> str:
    """Reduce `code`, the text that follows `prompt`, to what the entry point needs; the result also follows `prompt`.

    `code` is either a body that continues the prompt's last signature (kept, up to the end of that function)
    or a full definition that repeats the signature. After it, only imports and the definitions and globals
    reachable from `entry_point` stay; `__main__` blocks, top-level asserts, prints, calls and loops go. Code
    that does not parse is first cut to its longest parseable prefix; if no prefix parses, `code` comes back
    unchanged, so the run reports the syntax error instead of a confusing missing name.
    """
    kept_code = longest_parseable_prefix(code, prompt)
    if kept_code is None:
        return code
    text = prompt + kept_code
    statements = ast.parse(text).body
    lines = _Lines(text)
    boundary = len(prompt)
    needed = _reachable(_dependency_graph(text, statements, lines), entry_point)
    pieces: list[str] = []
    for node in statements:
        start, end = _span(node, lines)
        if end <= boundary:
            continue  # the prompt's own statement: the prompt is in the program already
        if start < boundary:
            pieces.append(text[boundary:end])  # the body that continues the prompt's signature
        elif _keep(node, needed):
            pieces.append(text[start:end])
    return "".join(piece + "\n\n" for piece in pieces[:-1]) + (pieces[-1] + "\n" if pieces else "")
