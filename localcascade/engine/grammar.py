"""The engine's grammar door: GBNF text and JSON schemas are checked here before llama.cpp sees them.

Every grammar the engine samples with (``ask``/``run --grammar-file``, the server's ``grammar`` and
``response_format``) passes ``check`` (sampling.grammar_sampler calls it before any C code), so
no path can hand llama.cpp a grammar that kills or freezes the process. What llama.cpp does with
a grammar (src/llama-grammar.cpp), and so what is bounded here, measured on the vendored llama.cpp
(docs/bad-input.md has the numbers):

- The parser recurses once per level of parentheses on the C stack (~440 bytes a level): ~19,000
  levels overflow an 8 MiB stack and the process dies with SIGSEGV. -> ``MAX_NESTING``.
- Rules that reference rules at their start (``r1 ::= r2``, ``r2 ::= r3``, ...; every group is such
  a rule too) are followed recursively by the left-recursion check and by every stack expansion,
  at load and after each token: ~70,000 deep overflow the stack. -> ``MAX_CHAIN``.
- The left-recursion check does not remember the rules it has checked: ``rI ::= rJ | rJ`` visits
  2^depth paths (30 levels, 536 bytes: 31 s in one C call). -> ``MAX_LEFT_PATHS``.
- Each rule costs memory and time in every check above; a group is a rule, and ``x{0,2000}``
  makes 2,000 of them (100,000 of those fit in 1 MiB). -> ``MAX_RULES``.
- A repetition copies its item: ``"<50 KB>"{1000}`` is 50 M symbols, ~1 GB and 6 s to parse.
  -> ``MAX_SYMBOLS``, counted after repetitions are expanded, as llama.cpp expands them.
- Sampling checks every candidate token against every grammar stack (the alternatives reachable at
  the current position): ~7 ms a stack for a 262K vocabulary, so 1,000 alternatives at one point
  cost 7 s per token, 10,000 cost 82 s, in one C call. -> ``MAX_STACKS``.

The analysis mirrors llama.cpp's parser (rules, groups as generated rules, repetitions expanded
into rules the way ``handle_repetitions`` does) without building the expansion. Text it cannot
follow is left to llama.cpp, whose parse errors are ordinary errors; the nesting count does not
depend on the parse, so a malformed grammar cannot reach the parser's recursion either.
"""

from __future__ import annotations

import collections
import json
import re
import sys
import threading
from dataclasses import dataclass, field

from localcascade.errors import UsageError

MAX_BYTES = 1024 * 1024      # the grammar text, whatever its source (= the --grammar-file cap)
MAX_NESTING = 1024           # parentheses levels (SIGSEGV at ~19,000 on an 8 MiB stack)
MAX_CHAIN = 2048             # rules deep through leftmost references (SIGSEGV at ~70,000)
MAX_LEFT_PATHS = 200_000     # paths the left-recursion check walks (2^22: 0.15 s, x4 per 2 levels)
MAX_RULES = 8_192            # rules, with those groups and repetitions generate (x{0,2000} makes 2,000)
MAX_SYMBOLS = 2_000_000      # grammar symbols after repetitions are expanded (~50 MB in llama.cpp)
MAX_STACKS = 256             # alternatives open at one position (~7 ms each per token, 262K vocab)

# JSON schema keywords whose value becomes that many grammar items (maxLength: 20000 is 20,000
# nested groups in the converter's output, minLength: 1e8 a 500 MB string before any check).
SCHEMA_MAX_COUNT = 1000
_SCHEMA_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_SCHEMA_MAX_DEPTH = 64


class GrammarRefused(UsageError):
    """A grammar or JSON schema past what llama.cpp can take safely (a 400 from the server)."""


def nesting_depth(text: str) -> int:
    """The deepest parenthesis nesting outside string literals, character classes and comments."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"[":  # a literal or a class: skip to its unescaped end
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest


def check(text: str, what: str = "the grammar") -> None:
    """Refuse GBNF text llama.cpp would crash on or spend unbounded time/memory in (GrammarRefused).

    A grammar taken recently is not analysed again: one request or command passes the door two or
    three times (the check before the load or the queue, then each sampler made with it).
    """
    with _RECENT_LOCK:
        if text in _RECENTLY_TAKEN:
            _RECENTLY_TAKEN.move_to_end(text)
            return
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_BYTES:
        raise GrammarRefused(f"{what} is {size:,} bytes; grammars may be at most {MAX_BYTES:,}")
    depth = nesting_depth(text)
    if depth > MAX_NESTING:
        raise GrammarRefused(f"{what} nests parentheses {depth:,} levels deep; at most {MAX_NESTING:,} are taken")
    # The analysis recurses once per group level like llama.cpp's parser (two Python frames a level,
    # which CPython 3.11+ keeps off the C stack): room for MAX_NESTING levels.
    if sys.getrecursionlimit() < 3 * MAX_NESTING + 500:
        sys.setrecursionlimit(3 * MAX_NESTING + 500)
    shape = _Parser(text, what).parse()
    if shape is None:
        # Not GBNF this analysis can follow: llama.cpp's parser refuses it with its own message.
        # Should it take it after all, the bound that needs no parse still holds: chains of rules
        # deep enough to overflow the stack need ~70,000 rules.
        if text.count("::=") > MAX_RULES:
            raise GrammarRefused(f"{what} defines more than {MAX_RULES:,} rules; fewer are taken")
        return
    shape.check(what)
    with _RECENT_LOCK:
        _RECENTLY_TAKEN[text] = None
        while len(_RECENTLY_TAKEN) > 8:
            _RECENTLY_TAKEN.popitem(last=False)


_RECENTLY_TAKEN: "collections.OrderedDict[str, None]" = collections.OrderedDict()
_RECENT_LOCK = threading.Lock()


# --- the analysis -----------------------------------------------------------------------------

_CAP = 1 << 62   # counts stop growing here: only "more than the limit" matters


@dataclass
class _Shape:
    """Rules as llama.cpp builds them: each rule a list of alternatives, each a list of symbols,
    a symbol ("t", n) for n terminal elements or ("r", rule id)."""

    rules: dict[int, list[list[tuple[str, int]]]] = field(default_factory=dict)
    symbols: int = 0

    def check(self, what: str) -> None:
        if self.symbols > MAX_SYMBOLS:
            raise GrammarRefused(f"{what} expands to {self.symbols:,} symbols once its repetitions are written out; "
                                 f"at most {MAX_SYMBOLS:,} are taken")
        defined = {rid for rid, alts in self.rules.items() if alts}
        if any(sym[0] == "r" and sym[1] not in defined for alts in self.rules.values() for alt in alts
               for sym in alt):
            return   # an undefined rule: llama.cpp refuses it before any recursion
        nullable = {rid for rid, alts in self.rules.items() if any(not alt for alt in alts)}
        order = _leftmost_order(self.rules, nullable)
        if order is None:
            raise GrammarRefused(f"{what} is left-recursive (a rule can start with itself), which llama.cpp "
                                 "does not support")
        chain: dict[int, int] = {}
        paths: dict[int, int] = {}
        opened: dict[int, int] = {}
        for rid in order:   # children first
            alts = self.rules[rid]
            chain[rid] = 1 + max((chain[c] for c in _leftmost_refs(alts, nullable)), default=0)
            paths[rid] = min(_CAP, 1 + sum(paths[c] for c in _leftmost_refs(alts, nullable, repeat=True)))
            opened[rid] = min(_CAP, sum(_open_from(alt, opened, nullable)[0] for alt in alts if alt))
        widest = max(opened.values(), default=0)
        for alts in self.rules.values():   # inner positions may reference rules ordered later
            for alt in alts:
                widest = max(widest, _open_from(alt, opened, nullable)[1])
        deepest = max(chain.values(), default=0)
        if deepest > MAX_CHAIN:
            raise GrammarRefused(f"{what} chains {deepest:,} rules through their first symbols; at most "
                                 f"{MAX_CHAIN:,} are taken")
        walked = _left_check_visits(self.rules, paths, nullable)
        if walked > MAX_LEFT_PATHS:
            raise GrammarRefused(f"{what} makes llama.cpp's left-recursion check walk {_count(walked)} paths "
                                 f"through rules that start with rules; at most {MAX_LEFT_PATHS:,} are taken")
        if widest > MAX_STACKS:
            raise GrammarRefused(f"{what} leaves {_count(widest)} alternatives open at one point; each costs "
                                 f"time on every token, at most {MAX_STACKS} are taken")


def _count(n: int) -> str:
    return f"{n:,}" if n < _CAP else "more than 10^18"


def _leftmost_refs(alts, nullable, *, repeat: bool = False) -> list[int]:
    """The rules llama.cpp's left-recursion check recurses into from these alternatives: leftmost
    references, and the next ones while the previous rule has an empty alternative. With
    ``repeat`` each occurrence counts (the check does not remember what it visited)."""
    found: list[int] = []
    for alt in alts:
        for kind, value in alt:
            if kind != "r":
                break
            found.append(value)
            if value not in nullable:
                break
    return found if repeat else list(dict.fromkeys(found))


def _open_from(alt, opened, nullable) -> tuple[int, int]:
    """Stacks llama.cpp's advance_stack makes for ``alt`` from its start, and the most it makes from
    any of its positions (upper bounds: llama.cpp also merges equal stacks). One pass from the end;
    reaching the end counts one (the caller's continuation)."""
    after = most = 1
    for kind, value in reversed(alt):
        after = 1 if kind != "r" else min(_CAP, opened.get(value, 0) + (after if value in nullable else 0))
        most = max(most, after)
    return after, most


def _leftmost_order(rules, nullable) -> list[int] | None:
    """Rules ordered so that every leftmost reference comes before its referrer; None on a cycle
    (left recursion). Iterative: the chains may be as deep as the input is long."""
    state: dict[int, int] = {}   # 1 in progress, 2 done
    order: list[int] = []
    for start in rules:
        if state.get(start):
            continue
        stack = [(start, iter(_leftmost_refs(rules[start], nullable)))]
        state[start] = 1
        while stack:
            rid, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                state[rid] = 2
                order.append(rid)
            elif state.get(child) == 1:
                return None
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(_leftmost_refs(rules[child], nullable))))
    return order


def _left_check_visits(rules, paths, nullable) -> int:
    """What llama.cpp's left-recursion check walks: from each rule in id order not yet visited, every
    leftmost path again."""
    visited: set[int] = set()
    total = 0
    for rid in sorted(rules):
        if rid in visited:
            continue
        total = min(_CAP, total + paths[rid])
        todo = [rid]
        while todo:
            r = todo.pop()
            if r not in visited:
                visited.add(r)
                todo.extend(_leftmost_refs(rules[r], nullable))
    return total


class _Parser:
    """Follows llama.cpp's GBNF parser (parse / parse_rule / parse_alternates / parse_sequence)."""

    _NAME = re.compile(r"[a-zA-Z0-9-]+")   # llama.cpp's is_word_char
    _INT = re.compile(r"[0-9]+")

    def __init__(self, text: str, what: str) -> None:
        self.text = text
        self.what = what
        self.names: dict[str, int] = {}
        self.shape = _Shape()

    def parse(self) -> _Shape | None:
        try:
            pos = self._space(0, True)
            while pos < len(self.text):
                pos = self._rule(pos)
        except _CannotFollow:
            return None
        return self.shape

    def _id(self, name: str) -> int:
        rid = self.names.setdefault(name, len(self.names))
        if rid >= MAX_RULES:
            # Counted while parsing: 100,000 "x{0,2000}" would be 200 M rules, here as in llama.cpp.
            raise GrammarRefused(f"{self.what} makes more than {MAX_RULES:,} rules (groups and repetitions "
                                 "count as rules); fewer are taken")
        return rid

    def _new_id(self) -> int:
        return self._id(f"\0{len(self.names)}")

    def _space(self, pos: int, newline_ok: bool) -> int:
        text = self.text
        while pos < len(text):
            c = text[pos]
            if c in " \t" or (c in "\r\n" and newline_ok):
                pos += 1
            elif c == "#":
                while pos < len(text) and text[pos] not in "\r\n":
                    pos += 1
            else:
                break
        return pos

    def _rule(self, pos: int) -> int:
        m = self._NAME.match(self.text, pos)
        if not m:
            raise _CannotFollow
        rid = self._id(m.group())
        pos = self._space(m.end(), False)
        if not self.text.startswith("::=", pos):
            raise _CannotFollow
        pos = self._alternates(self._space(pos + 3, True), rid, False)
        if pos < len(self.text) and self.text[pos] not in "\r\n":
            raise _CannotFollow
        return self._space(pos, True)

    def _add(self, rid: int, alts: list[list[tuple[str, int]]]) -> None:
        self.shape.rules[rid] = alts
        self.shape.symbols = min(_CAP, self.shape.symbols + sum(_weight(a) + 1 for a in alts))

    def _alternates(self, pos: int, rid: int, nested: bool) -> int:
        alts = []
        pos, alt = self._sequence(pos, rid, nested)
        alts.append(alt)
        while pos < len(self.text) and self.text[pos] == "|":
            pos, alt = self._sequence(self._space(pos + 1, True), rid, nested)
            alts.append(alt)
        self._add(rid, alts)
        return pos

    def _sequence(self, pos: int, rid: int, nested: bool) -> tuple[int, list[tuple[str, int]]]:
        text = self.text
        seq: list[tuple[str, int]] = []
        last: list[tuple[str, int]] = []   # the item a repetition applies to
        while pos < len(text):
            c = text[pos]
            if c == '"':
                end = self._literal_end(pos + 1, '"')
                last = [("t", max(1, end - pos - 1))]
                seq += last
                pos = self._space(end + 1, nested)
            elif c == "[":
                end = self._literal_end(pos + 1, "]")
                last = [("t", max(1, end - pos - 1))]
                seq += last
                pos = self._space(end + 1, nested)
            elif c in ".<!":
                if c != ".":
                    end = text.find(">", pos)
                    if end < 0:
                        raise _CannotFollow
                    pos = end
                last = [("t", 1)]
                seq += last
                pos = self._space(pos + 1, nested)
            elif c == "(":
                sub = self._new_id()
                pos = self._alternates(self._space(pos + 1, True), sub, True)
                if pos >= len(text) or text[pos] != ")":
                    raise _CannotFollow
                last = [("r", sub)]
                seq += last
                pos = self._space(pos + 1, nested)
            elif c in "*+?{":
                if not last:
                    raise _CannotFollow
                pos, low, high = self._repetition(pos, nested)
                del seq[len(seq) - len(last):]
                seq += self._repeat(last, low, high, rid)
                last = []
            else:
                m = self._NAME.match(text, pos)
                if not m:
                    break
                if self._space(m.end(), False) < len(text) and text.startswith("::=", self._space(m.end(), False)):
                    break   # the next rule's name
                last = [("r", self._id(m.group()))]
                seq += last
                pos = self._space(m.end(), nested)
        return pos, seq

    def _literal_end(self, pos: int, close: str) -> int:
        text = self.text
        while pos < len(text) and text[pos] != close:
            pos += 2 if text[pos] == "\\" else 1
        if pos >= len(text):
            raise _CannotFollow
        return pos

    def _repetition(self, pos: int, nested: bool) -> tuple[int, int, int | None]:
        text = self.text
        c = text[pos]
        if c != "{":
            return self._space(pos + 1, nested), (1 if c == "+" else 0), (1 if c == "?" else None)
        pos = self._space(pos + 1, nested)
        m = self._INT.match(text, pos)
        if not m:
            raise _CannotFollow
        low = high = int(m.group())
        pos = self._space(m.end(), nested)
        if pos < len(text) and text[pos] == ",":
            pos = self._space(pos + 1, nested)
            m = self._INT.match(text, pos)
            high = int(m.group()) if m else None
            pos = self._space(m.end(), nested) if m else pos
        if pos >= len(text) or text[pos] != "}":
            raise _CannotFollow
        if low > 2000 or (high is not None and high > 2000):
            raise _CannotFollow   # llama.cpp refuses repetitions past 2,000 itself
        return self._space(pos + 1, nested), low, high

    def _repeat(self, item, low: int, high: int | None, rid: int) -> list[tuple[str, int]]:
        """llama.cpp's handle_repetitions: the item ``low`` times, then a chain of optional rules."""
        out = [sym for _ in range(min(low, 1)) for sym in item]
        if low > 1:
            # Repeated copies are only counted: ``"<50 KB>"{1000}`` must not be built here either.
            self.shape.symbols = min(_CAP, self.shape.symbols + _weight(item) * (low - 1))
        n_opt = 1 if high is None else high - low
        previous = None
        for i in range(n_opt):
            rec = self._new_id()
            alt = list(item)
            if high is None:
                alt.append(("r", rec))
            elif i > 0:
                alt.append(("r", previous))
            self._add(rec, [alt, []])
            previous = rec
        if n_opt > 0:
            out.append(("r", previous))
        return out


def _weight(seq) -> int:
    return sum(n if kind == "t" else 1 for kind, n in seq)


class _CannotFollow(Exception):
    pass


# --- JSON schemas -----------------------------------------------------------------------------

def json_object_grammar() -> str:
    """The grammar of any JSON object (``response_format: {"type": "json_object"}``)."""
    from llama_cpp.llama_grammar import JSON_GBNF

    return JSON_GBNF


def from_json_schema(schema, what: str = "response_format.json_schema") -> str:
    """GBNF for a JSON schema, refusing (GrammarRefused) what would cost unbounded memory or time to
    convert or to sample with, and (UsageError) what cannot be converted, an invalid ``pattern``
    among it: before this, llama-cpp-python's converter wrote 20,000 nested groups for
    ``maxLength: 20000`` and a 500 MB string for ``minLength: 1e8``."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    _check_schema(schema, what, "", 0)
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except RecursionError:
        raise GrammarRefused(f"{what} nests too deeply to be turned into a grammar") from None
    except Exception as err:  # noqa: BLE001 - the converter raises bare Exceptions/AssertionErrors
        detail = str(err) or type(err).__name__
        raise UsageError(f"{what} cannot be turned into a grammar: {detail}") from None
    check(grammar, f"the grammar for {what}")
    return grammar


def _check_schema(node, what: str, where: str, depth: int) -> None:
    if depth > _SCHEMA_MAX_DEPTH:
        raise GrammarRefused(f"{what} nests more than {_SCHEMA_MAX_DEPTH} levels deep")
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_schema(item, what, f"{where}[{i}]", depth + 1)
        return
    if not isinstance(node, dict):
        return
    for key in _SCHEMA_COUNTS:
        value = node.get(key)
        if value is None or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)) or value != value or value < 0:
            raise UsageError(f"{what}{where}.{key} must be a count (a number >= 0), got {value!r}")
        if value > SCHEMA_MAX_COUNT:
            raise GrammarRefused(f"{what}{where}.{key} is {value:g}; a grammar can bound lengths and counts "
                                 f"up to {SCHEMA_MAX_COUNT:,}")
    pattern = node.get("pattern")
    if pattern is not None:
        _check_pattern(pattern, what, f"{where}.pattern")
    for key, value in node.items():
        if key != "pattern" and isinstance(value, (dict, list)):
            _check_schema(value, what, f"{where}.{key}", depth + 1)


_REGEX_BOUND = re.compile(r"(?<!\\)\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def _check_pattern(pattern, what: str, where: str) -> None:
    """A ``pattern`` must be a regular expression the converter can express, with bounded repetitions."""
    if not isinstance(pattern, str):
        raise UsageError(f"{what}{where} must be a string (a regular expression)")
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as err:
        raise UsageError(f"{what}{where} is not a valid regular expression: {err}") from None
    if not (pattern.startswith("^") and pattern.endswith("$")):
        raise UsageError(f"{what}{where} must start with ^ and end with $ (the whole string is matched)")
    for m in _REGEX_BOUND.finditer(pattern):
        for number in m.groups():
            if number and int(number) > SCHEMA_MAX_COUNT:
                raise GrammarRefused(f"{what}{where} repeats {m.group()}; a grammar can bound repetitions up to "
                                     f"{SCHEMA_MAX_COUNT:,}")
