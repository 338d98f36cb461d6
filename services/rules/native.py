"""A native evaluator: a rule's ``when`` compiled from the :mod:`celast` tree into Python closures
(and, for the common shapes, into one generated function: :mod:`services.rules.codegen`).

Why: the ``cel`` binding costs about 1 µs per value converted into CEL and
0.3 µs per call, which is most of an event's evaluation time (bench/rules.py).
A closure reads the event's plain Python dicts and lists in place.

The ``cel`` library stays the reference and the fallback:

- :func:`compile_native` returns None for anything outside the subset below;
  such a rule is evaluated by the library (decided once, at load time);
- the engine uses a native program only on events whose values are plain JSON
  (:func:`plain_values`): anything else (tuples, sets, huge ints, non-string
  keys) goes to the library, which also owns the "event cannot be given to
  CEL" error.

The subset, with the library's semantics (probed against
common-expression-language 0.10, and checked by tests/test_rules_native.py):
literals (int, double, string, bool, null, lists); variables and comprehension
names; ``.field`` / ``[index]`` on maps and lists; ``has()``; ``==``/``!=``
(heterogeneous: ``1 == 1.0``, ``1 == "a"`` is false, ``true == 1`` is false);
``<``/``<=``/``>``/``>=`` (int and double compare, anything else mixed is an
error); ``in`` on lists and map keys; ``+ - * / %`` (no int/double mixing,
int64 overflow is an error); ``!``, unary ``-``; ``&&``/``||`` absorbing
errors (``false && error`` is false, ``true || error`` is true); the
ternary; ``size``, ``contains``, ``startsWith``, ``endsWith``, ``matches``
(literal patterns only), ``lowerAscii``; the macros ``exists``, ``all``,
``exists_one``, ``map``, ``filter`` (an error in an iteration stops it, as
in the library); and the rule helpers (:mod:`services.rules.helpers`).

A runtime error is a Python exception whose text :func:`expr.runtime_message`
turns into the same message the library's error gives (``no such key: x``,
``No such overload: ...``) where the library's is known; the engine records it
as a rule error exactly as before.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from . import celast
from .celast import Binary, Call, Cond, Ident, Index, ListExpr, Lit, Node, Select, Unary, field_path
from .fields import VARIABLES
from .analysis import ExactFloor, exact_floor
from .codegen import generate
from .helpers import GRADED_FIELD, HELPERS, Facts, highest, words_of

__all__ = ["NativeError", "NativeProgram", "compile_native", "compile_source", "plain_values"]

#: A compiled condition: (variables, helper facts) -> value; raises on a CEL error.
NativeProgram = Callable[[dict[str, Any], Facts], Any]

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
NO_OVERLOAD = "No such overload: the operation is not defined for the given operand types"


class NativeError(Exception):
    """A CEL runtime error raised by a native program (a rule error, never a silent false)."""


class Unsupported(Exception):
    """Outside the native subset: the rule is left to the library."""


def _overload() -> NativeError:
    return NativeError(NO_OVERLOAD)


# --- values ------------------------------------------------------------------


def plain_values(value: Any) -> bool:
    """Whether ``value`` holds only JSON values the native evaluator reads exactly as the
    library would after conversion (str keys, int64 ints, encodable strings)."""
    return _plain_items((value,))


def _plain_items(values: Iterable[Any]) -> bool:
    # One loop with the scalar cases inline and one call per container: an event has
    # hundreds of values, and a call per value was most of the check.
    for v in values:
        t = type(v)
        if t is float or v is None or t is bool:
            continue
        if t is str:
            if v.isascii() or _encodable(v):
                continue
            return False
        if t is int:
            if INT_MIN <= v <= INT_MAX:
                continue
            return False
        if t is dict:
            if _plain_map(v):
                continue
            return False
        if t is list and _plain_items(v):
            continue
        return False
    return True


def _plain_map(value: dict[Any, Any]) -> bool:
    # Keys and the usual values (doubles, ASCII strings, int64 ints) in one pass: facet items.
    for k, v in value.items():
        if type(k) is not str:
            return False
        t = type(v)
        if t is float or (t is str and v.isascii()) or (t is int and INT_MIN <= v <= INT_MAX) or v is None:
            continue
        if not _plain_items((v,)):
            return False
    return True


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the library cannot take it
        return False
    return True


def _eq(a: Any, b: Any) -> bool:
    """CEL equality as the library has it: no error across types, numbers compare by value,
    bools are not numbers."""
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is list:
            return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b, strict=True))
        if ta is dict:
            return a.keys() == b.keys() and all(_eq(v, b[k]) for k, v in a.items())
        return bool(a == b)
    if (ta is int and tb is float) or (ta is float and tb is int):
        return float(a) == float(b)  # the library compares an int with a double as doubles
    return False


def _order(a: Any, b: Any) -> tuple[Any, Any]:
    """Operands of ``<`` and friends, or the library's error."""
    ta, tb = type(a), type(b)
    if ta is tb and ta in (int, str, bool):
        return a, b
    if ta in (int, float) and tb in (int, float):
        if (ta is float and math.isnan(a)) or (tb is float and math.isnan(b)):
            raise _overload()  # NaN has no order: the library reports no overload
        return float(a), float(b)
    raise _overload()


def _int(value: int, op: str, a: Any, b: Any) -> int:
    if INT_MIN <= value <= INT_MAX:
        return value
    raise NativeError(f"Arithmetic overflow in '{op}' on {a} and {b}")


def _truncdiv(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _arith(op: str, a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if ta is int and tb is int:
        if op == "+":
            return _int(a + b, "add", a, b)
        if op == "-":
            return _int(a - b, "sub", a, b)
        if op == "*":
            return _int(a * b, "mul", a, b)
        if b == 0:
            raise NativeError("division by zero in CEL expression" if op == "/" else "modulo by zero in CEL expression")
        if op == "/":
            return _int(_truncdiv(a, b), "div", a, b)
        if a == INT_MIN and b == -1:
            raise NativeError(f"Arithmetic overflow in 'rem' on {a} and {b}")
        return a - b * _truncdiv(a, b)  # the sign follows the dividend, as in C and Rust
    if ta is float and tb is float:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            if b == 0.0:  # IEEE 754, as the library: x/0.0 is ±inf, 0/0 NaN
                if a == 0.0 or math.isnan(a):
                    return math.nan
                return math.copysign(math.inf, a) * math.copysign(1.0, b)
            return a / b
        raise _overload()  # double % double is not defined
    if op == "+" and ta is tb and ta in (str, list):
        return a + b
    raise _overload()


def _size(value: Any) -> int:
    t = type(value)
    if t is str:
        return len(value.encode("utf-8"))  # the library counts UTF-8 bytes, not code points
    if t is list or t is dict:
        return len(value)
    raise _overload()


def _lower_ascii(value: Any) -> str:
    if type(value) is not str:
        raise _overload()
    return value.translate(_ASCII_LOWER) if not value.islower() else value


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def _select(value: Any, name: str) -> Any:
    if type(value) is dict:
        try:
            return value[name]
        except KeyError:
            raise KeyError(name) from None  # runtime_message: "no such key: name", as the library
    if type(value) is list:
        raise NativeError("Unexpected type: got 'string', want 'int|uint'")
    raise _overload()


def _index(value: Any, index: Any) -> Any:
    if type(value) is list:
        if type(index) is not int:
            raise NativeError(f"Unexpected type: got '{_type_name(index)}', want 'int|uint'")
        if not 0 <= index < len(value):
            raise IndexError(f"index out of bounds: {index}")
        return value[index]
    if type(value) is dict:
        key = _map_key(index)
        if type(key) is not str:
            raise KeyError(key[0])  # an int or bool key: never in a plain event map (string keys)
        if key not in value:
            raise KeyError(key)
        return value[key]
    raise _overload()


def _map_key(value: Any) -> Any:
    """The key a CEL value stands for in a map read from the event (whose keys are strings)."""
    t = type(value)
    if t is str:
        return value
    if t is bool:
        return ("true" if value else "false",)  # a tuple: "not a string key", named for the message
    if t is int:
        return (str(value),)
    raise NativeError(f"Value of type {_type_name(value)} cannot be used as a map key")


def _type_name(value: Any) -> str:
    return {bool: "bool", int: "int", float: "double", str: "string", list: "list", dict: "map"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _in(item: Any, container: Any) -> bool:
    if type(container) is list:
        return any(_eq(item, x) for x in container)
    if type(container) is dict:
        t = type(item)
        if t is str:
            return item in container
        if t is int or t is bool:
            return False  # plain event maps have string keys only
        raise NativeError(f"Value of type {_type_name(item)} cannot be used as a map key")
    raise _overload()


def _iterate(target: Any) -> list[Any]:
    if type(target) is list:
        return target
    if type(target) is dict:
        return list(target)  # comprehensions over a map range over its keys
    raise _overload()


# --- compiler ------------------------------------------------------------------

_RAISE = object()  # "this operand raised": the error is kept aside


def compile_native(node: Node, *, inline: bool = True) -> NativeProgram | None:
    """A native program for ``node``, or None when it uses something outside the subset:
    one generated function (:mod:`services.rules.codegen`) calling closures for the nodes
    it does not inline, or else (and with ``inline=False``) the closures alone."""
    try:
        closures = _compile(node, frozenset())
    except (Unsupported, RecursionError):  # too deep for closures: the library copes
        return None
    generated = generate(node, lambda part: _compile(part, frozenset()), _RUNTIME, _LITERAL_HELPERS) if inline else None
    return closures if generated is None else generated


def _compile(node: Node, bound: frozenset[str]) -> NativeProgram:
    if isinstance(node, Lit):
        return _literal(node)
    if isinstance(node, Ident):
        name = node.name
        if name not in bound and name not in VARIABLES:
            raise Unsupported(name)  # type names, namespaces
        return lambda env, facts: env[name]
    if isinstance(node, Select):
        path = field_path(node)
        if path is not None:
            return _path(path[0], path[1:])
        operand, field = _compile(node.operand, bound), node.name
        return lambda env, facts: _select(operand(env, facts), field)
    if isinstance(node, Index):
        operand, index = _compile(node.operand, bound), _compile(node.index, bound)
        return lambda env, facts: _index(operand(env, facts), index(env, facts))
    if isinstance(node, ListExpr):
        items = [_compile(item, bound) for item in node.items]
        return lambda env, facts: [item(env, facts) for item in items]
    if isinstance(node, Unary):
        return _unary(node.op, _compile(node.operand, bound))
    if isinstance(node, Binary):
        return _binary(node, bound)
    if isinstance(node, Cond):
        return _ternary(_compile(node.cond, bound), _compile(node.then, bound), _compile(node.other, bound))
    if isinstance(node, Call):
        return _call(node, bound)
    raise Unsupported(type(node).__name__)  # map and message literals


def _path(root: str, names: list[str]) -> NativeProgram:
    # The hot shape of rule conditions (`acoustics.silence_ratio`): one closure, no calls
    # unless a step is not a map (then _select raises the library's error).
    if len(names) == 1:
        (name,) = names

        def field(env: dict[str, Any], facts: Facts) -> Any:
            value = env[root]
            if type(value) is dict:
                try:
                    return value[name]
                except KeyError:
                    raise KeyError(name) from None
            return _select(value, name)

        return field

    def fields(env: dict[str, Any], facts: Facts) -> Any:
        value = env[root]
        for name in names:
            if type(value) is dict:
                try:
                    value = value[name]
                except KeyError:
                    raise KeyError(name) from None
            else:
                value = _select(value, name)
        return value

    return fields


def _literal(node: Lit) -> NativeProgram:
    if node.kind not in ("int", "double", "string", "bool", "null"):
        raise Unsupported(node.kind)  # uint and bytes: no plain Python twin
    value = node.value
    if node.kind == "int" and not INT_MIN <= value <= INT_MAX:
        raise Unsupported("int literal out of range")
    return lambda env, facts: value


def _unary(op: str, operand: NativeProgram) -> NativeProgram:
    if op == "!":

        def negate(env: dict[str, Any], facts: Facts) -> Any:
            value = operand(env, facts)
            if value is True:
                return False
            if value is False:
                return True
            raise _overload()

        return negate

    def minus(env: dict[str, Any], facts: Facts) -> Any:
        value = operand(env, facts)
        if type(value) is int:
            return value if value == INT_MIN else -value  # the library wraps: -(-2**63) is -2**63
        if type(value) is float:
            return -value
        raise _overload()

    return minus


def _binary(node: Binary, bound: frozenset[str]) -> NativeProgram:
    op = node.op
    left, right = _compile(node.left, bound), _compile(node.right, bound)
    fast = _with_literal(node, left)
    if fast is not None:
        return fast
    if op in ("&&", "||"):
        return _logic(op == "&&", left, right)
    if op == "==":
        return lambda env, facts: _eq(left(env, facts), right(env, facts))
    if op == "!=":
        return lambda env, facts: not _eq(left(env, facts), right(env, facts))
    if op == "in":
        return lambda env, facts: _in(left(env, facts), right(env, facts))
    if op in ("<", "<=", ">", ">="):
        return _relation(op, left, right)
    if op in ("+", "-", "*", "/", "%"):
        return lambda env, facts: _arith(op, left(env, facts), right(env, facts))
    raise Unsupported(op)


def _with_literal(node: Binary, left: NativeProgram) -> NativeProgram | None:
    """Specialised closures for ``x == "lit"``, ``x > 0.4``, ``x in ["a", "b"]``: the same
    results as the generic ones (they defer to them for any other operand type)."""
    op, lit = node.op, node.right
    if op in ("==", "!=") and isinstance(lit, Lit) and lit.kind == "string":
        text = lit.value
        if op == "==":
            return lambda env, facts: type(v := left(env, facts)) is str and v == text
        return lambda env, facts: not (type(v := left(env, facts)) is str and v == text)
    if op in ("<", "<=", ">", ">=") and isinstance(lit, Lit) and lit.kind in ("int", "double"):
        number, generic = lit.value, _RELATIONS[op]
        floating = float(number)
        if op == ">":
            def gt(env: dict[str, Any], facts: Facts) -> bool:
                v = left(env, facts)
                if type(v) is float and v == v:  # not NaN (no order: an error, below)
                    return v > floating
                return generic(v, number)
            return gt  # fmt: skip
        if op == ">=":
            def ge(env: dict[str, Any], facts: Facts) -> bool:
                v = left(env, facts)
                if type(v) is float and v == v:
                    return v >= floating
                return generic(v, number)
            return ge  # fmt: skip
        if op == "<":
            def lt(env: dict[str, Any], facts: Facts) -> bool:
                v = left(env, facts)
                if type(v) is float and v == v:
                    return v < floating
                return generic(v, number)
            return lt  # fmt: skip

        def le(env: dict[str, Any], facts: Facts) -> bool:
            v = left(env, facts)
            if type(v) is float and v == v:
                return v <= floating
            return generic(v, number)

        return le
    if op == "in" and isinstance(lit, ListExpr) and lit.items and all(isinstance(i, Lit) and i.kind == "string" for i in lit.items):
        texts = frozenset(i.value for i in lit.items)  # type: ignore[attr-defined]
        items = [i.value for i in lit.items]  # type: ignore[attr-defined]
        return lambda env, facts: (v in texts) if type(v := left(env, facts)) is str else _in(v, items)
    return None


def _lt(a: Any, b: Any) -> bool:
    x, y = _order(a, b)
    return bool(x < y)


def _le(a: Any, b: Any) -> bool:
    x, y = _order(a, b)
    return bool(x <= y)


def _gt(a: Any, b: Any) -> bool:
    x, y = _order(a, b)
    return bool(x > y)


def _ge(a: Any, b: Any) -> bool:
    x, y = _order(a, b)
    return bool(x >= y)


_RELATIONS: dict[str, Callable[[Any, Any], bool]] = {"<": _lt, "<=": _le, ">": _gt, ">=": _ge}


def _relation(op: str, left: NativeProgram, right: NativeProgram) -> NativeProgram:
    # One closure per operator: no dispatch on the operator per evaluation.
    if op == "<":
        def lt(env: dict[str, Any], facts: Facts) -> bool:
            a, b = _order(left(env, facts), right(env, facts))
            return bool(a < b)
        return lt  # fmt: skip
    if op == "<=":
        def le(env: dict[str, Any], facts: Facts) -> bool:
            a, b = _order(left(env, facts), right(env, facts))
            return bool(a <= b)
        return le  # fmt: skip
    if op == ">":
        def gt(env: dict[str, Any], facts: Facts) -> bool:
            a, b = _order(left(env, facts), right(env, facts))
            return bool(a > b)
        return gt  # fmt: skip

    def ge(env: dict[str, Any], facts: Facts) -> bool:
        a, b = _order(left(env, facts), right(env, facts))
        return bool(a >= b)

    return ge


def _logic(conjunction: bool, left: NativeProgram, right: NativeProgram) -> NativeProgram:
    """``&&``/``||`` as the library evaluates them: the absorbing value (false for ``&&``,
    true for ``||``) on either side wins over an error on the other; otherwise the right
    operand's error, then the left's, then "no such overload" for a non-bool."""
    absorbing = not conjunction

    def logic(env: dict[str, Any], facts: Facts) -> Any:
        left_error: Exception | None = None
        try:
            a = left(env, facts)
        except Exception as exc:  # noqa: BLE001 -- absorbed if the right side decides
            a, left_error = _RAISE, exc
        if a is absorbing:
            return absorbing
        b = right(env, facts)  # its error propagates: the library reports the right side's first
        if b is absorbing:
            return absorbing
        if left_error is not None:
            raise left_error
        if a is not absorbing and type(a) is bool and type(b) is bool:
            return not absorbing
        raise _overload()

    return logic


def _ternary(cond: NativeProgram, then: NativeProgram, other: NativeProgram) -> NativeProgram:
    def ternary(env: dict[str, Any], facts: Facts) -> Any:
        value = cond(env, facts)
        if value is True:
            return then(env, facts)
        if value is False:
            return other(env, facts)
        raise _overload()

    return ternary


# --- calls -----------------------------------------------------------------------

_HELPER_METHODS = {"emotion": Facts.emotion, "sound": Facts.sound, "any_words": Facts.any_words, "all_words": Facts.all_words}


def _call(node: Call, bound: frozenset[str]) -> NativeProgram:
    name, target, nargs = node.function, node.target, len(node.args)
    if node.is_macro:
        return _macro(node, bound)
    if target is None and name == "has":
        if nargs != 1 or not isinstance(node.args[0], Select):
            raise Unsupported("has")
        select = node.args[0]
        operand, field = _compile(select.operand, bound), select.name
        return lambda env, facts: _has(operand(env, facts), field)
    if target is None and name in HELPERS:
        if nargs != len(HELPERS[name].params):
            raise Unsupported(name)  # the analysis reports it; the library owns the error
        fast = _helper_with_literals(node, bound)
        if fast is not None:
            return fast
        method = _HELPER_METHODS[name]
        args = [_compile(a, bound) for a in node.args]
        return lambda env, facts: method(facts, *[a(env, facts) for a in args])
    if name == "size" and ((target is None and nargs == 1) or (target is not None and nargs == 0)):
        operand = _compile(target if target is not None else node.args[0], bound)
        return lambda env, facts: _size(operand(env, facts))
    if target is None:
        raise Unsupported(name)
    receiver = _compile(target, bound)
    if name == "lowerAscii" and nargs == 0:
        return lambda env, facts: _lower_ascii(receiver(env, facts))
    if nargs != 1:
        raise Unsupported(name)
    if name == "matches":
        return _matches(receiver, node.args[0])
    arg = _compile(node.args[0], bound)
    if name == "contains":
        return lambda env, facts: _contains(receiver(env, facts), arg(env, facts))
    if name == "startsWith":
        return _string_test(receiver, arg, str.startswith)
    if name == "endsWith":
        return _string_test(receiver, arg, str.endswith)
    raise Unsupported(name)


def _literal_labels(node: Node) -> frozenset[str] | None:
    if isinstance(node, Lit) and node.kind == "string":
        return frozenset((node.value,))
    if isinstance(node, ListExpr) and node.items and all(isinstance(i, Lit) and i.kind == "string" for i in node.items):
        return frozenset(i.value for i in node.items)  # type: ignore[attr-defined]
    return None


def _literal_number(node: Node) -> float | None:
    if isinstance(node, Lit) and node.kind in ("int", "double"):
        return float(node.value)
    if isinstance(node, Unary) and node.op == "-" and isinstance(node.operand, Lit) and node.operand.kind in ("int", "double"):
        return -float(node.operand.value)
    return None


def _helper_literals(node: Call) -> tuple[str, tuple[Any, ...]] | None:
    """A helper call whose label/word/threshold arguments are literals, checked and prepared
    once (the helpers would check and split them on every call): the Facts method to call
    and its prepared arguments; for any_words/all_words (phrases, all_of, the helper for a
    text that is not a string). None: the helper itself checks its arguments per call."""
    name, args = node.function, node.args
    if name == "emotion":
        role, labels, floor = args
        wanted, threshold = _literal_labels(labels), _literal_number(floor)
        if not (isinstance(role, Lit) and role.kind == "string") or wanted is None or threshold is None:
            return None
        return "emotion_of", (role.value, wanted, threshold)
    if name == "sound":
        labels, floor = args
        wanted, threshold = _literal_labels(labels), _literal_number(floor)
        if wanted is None or threshold is None:
            return None
        return "sound_of", (wanted, threshold)
    words = args[1]
    if isinstance(words, Lit) and words.kind == "string":
        phrases = [words_of(words.value)]
    elif isinstance(words, ListExpr) and words.items and all(isinstance(i, Lit) and i.kind == "string" for i in words.items):
        phrases = [words_of(i.value) for i in words.items]  # type: ignore[attr-defined]
    else:
        return None
    return "phrases_in", (phrases, name == "all_words", _HELPER_METHODS[name])


def _exact_floor_literals(node: Call) -> tuple[str, str | None, frozenset[str], float, bool] | None:
    exact = exact_floor(node, frozenset())
    return None if exact is None else (exact.kind, exact.role, exact.labels, exact.floor, exact.strict)


#: What codegen inlines beyond the operators: helper calls and exact-floor comprehensions.
_LITERAL_HELPERS: dict[str, Callable[[Call], Any]] = {
    **{name: _helper_literals for name in ("emotion", "sound", "any_words", "all_words")},
    "exists": _exact_floor_literals,
}


def _helper_with_literals(node: Call, bound: frozenset[str]) -> NativeProgram | None:
    literals = _helper_literals(node)
    if literals is None:
        return None
    method, args = literals
    if method == "emotion_of":
        who, wanted, threshold = args
        return lambda env, facts: facts.emotion_of(who, wanted, threshold)
    if method == "sound_of":
        wanted, threshold = args
        return lambda env, facts: facts.sound_of(wanted, threshold)
    phrases, all_of, helper = args
    text = _compile(node.args[0], bound)

    def words(env: dict[str, Any], facts: Facts) -> bool:
        value = text(env, facts)
        if type(value) is not str:
            return helper(facts, value, [])  # type: ignore[no-any-return]  # the helper's own error for a non-string text
        return facts.phrases_in(value, phrases, all_of=all_of)

    return words


def _string_test(receiver: NativeProgram, arg: NativeProgram, test: Callable[[str, str], bool]) -> NativeProgram:
    def string_test(env: dict[str, Any], facts: Facts) -> bool:
        text, other = receiver(env, facts), arg(env, facts)
        if type(text) is not str or type(other) is not str:
            raise _overload()
        return test(text, other)

    return string_test


def _has(value: Any, field: str) -> bool:
    if type(value) is dict:
        return field in value
    if type(value) is list:
        raise NativeError("Unexpected type: got 'string', want 'int|uint'")
    raise _overload()


def _contains(container: Any, item: Any) -> bool:
    # The library's string overload, else cel.stdlib's shim: Python's `in` on lists and maps.
    if type(container) is str:
        if type(item) is not str:
            raise _overload()
        return item in container
    if type(container) is list or type(container) is dict:
        try:
            return item in container
        except TypeError as exc:  # an unhashable item in a map: the shim fails the same way
            raise NativeError(str(exc)) from None
    raise _overload()


# Rust's regex and Python's re agree on the common syntax; where they differ the rule
# goes to the library: lookaround and backreferences (Rust rejects them), Python-only
# or differently-meant escapes and groups, and multi-line/verbose flags. `$` is end of
# text in Rust but "before a final newline" too in Python: it becomes \Z below.
_REGEX_UNSAFE = re.compile(r"\(\?[=!<P#]|\\[0-9AZzGpPQEhHNRXKuUx]|\(\?[a-zA-Z]*[mxsuUR]")


def _matches(receiver: NativeProgram, pattern_node: Node) -> NativeProgram:
    if not isinstance(pattern_node, Lit) or pattern_node.kind != "string":
        raise Unsupported("matches with a computed pattern")
    source = pattern_node.value
    if _REGEX_UNSAFE.search(source):
        raise Unsupported("regex syntax outside the shared subset")
    translated = _dollar_to_end(source)
    try:
        pattern = re.compile(translated)
    except re.error:
        raise Unsupported("regex Python cannot compile") from None
    search = pattern.search

    def matches(env: dict[str, Any], facts: Facts) -> bool:
        text = receiver(env, facts)
        if type(text) is not str:
            raise _overload()
        return search(text) is not None

    return matches


def _dollar_to_end(source: str) -> str:
    out, i, in_class = [], 0, False
    while i < len(source):
        c = source[i]
        if c == "\\":
            out.append(source[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]" or (out and out[-1] == "[")
        elif c == "[":
            in_class = True
        elif c == "$":
            c = r"\Z"
        out.append(c)
        i += 1
    return "".join(out)


def _macro(node: Call, bound: frozenset[str]) -> NativeProgram:
    assert node.target is not None
    var = node.args[0]
    assert isinstance(var, Ident)
    name, kind = var.name, node.function
    if len(node.args) == 3 and kind != "map":
        raise Unsupported(kind)
    target = _compile(node.target, bound)
    inner = bound | {name}
    bodies = [_compile(a, inner) for a in node.args[1:]]

    def scope(env: dict[str, Any]) -> dict[str, Any]:
        # A copy per comprehension, not per item: the closures are shared across threads.
        return dict(env)

    if kind in ("exists", "all"):
        (pred,) = bodies
        # exists stops at the first true, all at the first false: one loop, mirrored.
        decisive = kind == "exists"

        def quantifier(env: dict[str, Any], facts: Facts) -> bool:
            local = scope(env)
            for item in _iterate(target(env, facts)):
                local[name] = item
                value = pred(local, facts)
                if value is decisive:
                    return decisive
                if value is not (not decisive):
                    raise _overload()
            return not decisive

        exact = exact_floor(node, bound) if kind == "exists" else None
        return quantifier if exact is None else _exists_floor(exact, target, quantifier)
    if kind == "exists_one":
        (pred,) = bodies

        def exists_one(env: dict[str, Any], facts: Facts) -> bool:
            local, count = scope(env), 0
            for item in _iterate(target(env, facts)):
                local[name] = item
                value = pred(local, facts)
                if value is True:
                    count += 1
                elif value is not False:
                    raise _overload()
            return count == 1

        return exists_one
    if kind == "filter":
        (pred,) = bodies

        def filter_(env: dict[str, Any], facts: Facts) -> list[Any]:
            local, out = scope(env), []
            for item in _iterate(target(env, facts)):
                local[name] = item
                value = pred(local, facts)
                if value is True:
                    out.append(item)
                elif value is not False:
                    raise _overload()
            return out

        return filter_
    keep = bodies[0] if len(bodies) == 2 else None
    body = bodies[-1]

    def map_(env: dict[str, Any], facts: Facts) -> list[Any]:
        local, out = scope(env), []
        for item in _iterate(target(env, facts)):
            local[name] = item
            if keep is not None:
                value = keep(local, facts)
                if value is False:
                    continue
                if value is not True:
                    raise _overload()
            out.append(body(local, facts))
        return out

    return map_


def _exists_floor(exact: ExactFloor, target: NativeProgram, loop: NativeProgram) -> NativeProgram:
    """An exact-floor ``exists`` (see analysis.ExactFloor): one comparison with the highest
    value of the event's items, found once per event for every rule that asks (the
    comprehension itself when an item cannot be compared)."""
    kind, role, labels, floor, strict = exact.kind, exact.role, exact.labels, exact.floor, exact.strict
    field = GRADED_FIELD[kind]

    def exists_floor(env: dict[str, Any], facts: Facts) -> bool:
        items = target(env, facts)
        if facts is not None and items is (facts.emotions if kind == "emotion" else facts.sounds):
            best = facts.highest(kind, role, labels)
        else:
            best = highest(items, field, role, labels)
        if best == math.inf:
            return loop(env, facts)  # type: ignore[no-any-return]
        return best > floor if strict else best >= floor

    return exists_floor


#: What generated conditions call (services.rules.codegen): the closures' own semantics.
_RUNTIME: dict[str, Any] = {
    "_RAISE": _RAISE, "_overload": _overload, "_select": _select, "_has": _has, "_eq": _eq, "_in": _in,
    "_lt": _lt, "_le": _le, "_gt": _gt, "_ge": _ge, "_arith": _arith, "_highest": highest, "_INF": math.inf,
}  # fmt: skip


def compile_source(source: str, *, inline: bool = True) -> NativeProgram | None:
    """Parse and compile (tests and tools); None when unsupported or unreadable."""
    try:
        return compile_native(celast.parse(source), inline=inline)
    except celast.CelSyntaxError:
        return None
