"""The chat template, rendered under a budget: an artifact's template is code (Jinja), and a
template that loops forever or builds a string of gigabytes must fail with a clear error instead
of hanging or exhausting memory the model thread shares.

Jinja's immutable sandbox already keeps a template from Python's internals and caps `range` at
100000 items. On top of it, three bounds:
- time: the template's own frames are traced while it renders, and a render that runs past
  RENDER_SECONDS stops (a real chat template renders a long conversation in milliseconds);
- size: every value an operator (`+ * ** % ~`), a filter or a method call produces is checked
  against MAX_RENDERED_CHARS (a prompt of the longest context is ~0.5 M characters), so a
  string doubled in a loop stops at its first value past the cap;
- one-shot giants: a number past the cap given to a filter or call (`center(10**9)`,
  `ljust`, `zfill`, ...), a width past it in a format string (`'%0999999999d' % 1`,
  `'{:>999999999}'.format(1)`) and a `replace` whose result would pass it are refused before
  they run, since their result would be allocated before any check could see it.
"""

import functools
import operator
import re
import sys
import time

import jinja2
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_RENDERED_CHARS = 4_000_000
RENDER_SECONDS = 2.0
TEMPLATE_FILE = "<template>"  # the file name Jinja compiles a template string under
DIGITS = re.compile(r"\d+")


class TemplateBudgetError(jinja2.exceptions.SecurityError):
    """A template went past a render budget (time or size)."""


def _check_size(value):
    if isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_RENDERED_CHARS:
        raise TemplateBudgetError(f"the template builds a value of {len(value)} items, beyond any prompt's "
                                  f"{MAX_RENDERED_CHARS} characters")
    return value


def _check_format_string(text) -> None:
    """A width or precision in a format string beyond the cap allocates that much at once."""
    if isinstance(text, str) and any(len(run) > 7 or int(run) > MAX_RENDERED_CHARS for run in DIGITS.findall(text)):
        raise TemplateBudgetError("the template formats with a width beyond any prompt's length")


def _check_arguments(args, kwargs) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_RENDERED_CHARS:
            raise TemplateBudgetError(f"the template passes {value} to a filter or call, beyond any prompt's length")


def _check_replace(text, old, new, count=-1) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        found = text.count(old) if old else len(text) + 1
        found = found if count is None or count < 0 else min(found, count)
        _check_size(range(len(text) + found * max(0, len(new) - len(old))))


def _bounded_filter(name: str, function):
    @functools.wraps(function)
    def bounded(*args, **kwargs):
        _check_arguments(args, kwargs)
        values = [a for a in args if not isinstance(a, (jinja2.runtime.Context, jinja2.nodes.EvalContext,
                                                         jinja2.Environment))]
        if name == "format" and values:
            _check_format_string(values[0])
        if name == "replace" and len(values) >= 3:
            _check_replace(*values[:4])
        return _check_size(function(*args, **kwargs))
    return bounded


class BoundedCodeGenerator(CodeGenerator):
    """`~` (string concatenation) through the environment, like the intercepted operators."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.concatenate((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with every operator, filter and call result size-checked."""

    code_generator_class = BoundedCodeGenerator
    intercepted_binops = frozenset(["*", "**", "+", "%"])

    def __init__(self, **options):
        super().__init__(**options)
        self.filters = {name: _bounded_filter(name, function) for name, function in self.filters.items()}

    def call_binop(self, context, op, left, right):
        if op == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise TemplateBudgetError(f"the template raises to the power {right}")
        if op == "*":
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, (str, list, tuple)) and isinstance(count, int) \
                        and len(sequence) * count > MAX_RENDERED_CHARS:
                    raise TemplateBudgetError("the template repeats a value beyond any prompt's length")
        if op == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
            _check_size(range(len(left) + len(right)))
        if op == "%":
            _check_format_string(left)
        operation = {"*": operator.mul, "**": operator.pow, "+": operator.add, "%": operator.mod}[op]
        return _check_size(operation(left, right))

    def concatenate(self, values) -> str:
        _check_size(range(sum(len(v) if isinstance(v, str) else 0 for v in values)))
        return _check_size("".join(map(str, values)))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's own signature)
        _check_arguments(args, kwargs)
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format at attribute access
        bound_to, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
        if isinstance(bound_to, str) and name in ("format", "format_map"):
            _check_format_string(bound_to)
        if isinstance(bound_to, str) and name == "replace":
            _check_replace(bound_to, *args[:3])
        return _check_size(super().call(__context, __obj, *args, **kwargs))


def render(template: jinja2.Template, seconds: float = RENDER_SECONDS, **variables) -> str:
    """The template's output for `variables`, within `seconds` of CPU work and the size cap;
    a TemplateBudgetError (a jinja2 SecurityError) when it goes past either."""
    deadline = time.perf_counter() + seconds

    def in_template(frame, event, arg):
        if time.perf_counter() > deadline:
            raise TemplateBudgetError(f"the template ran past its {seconds:g} s budget")
        return in_template

    def on_call(frame, event, arg):  # traces only the template's own code: loops there are what can run away
        return in_template if frame.f_code.co_filename == TEMPLATE_FILE else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        pieces, size = [], 0
        for piece in template.generate(**variables):
            size += len(piece)
            if size > MAX_RENDERED_CHARS:
                raise TemplateBudgetError("the template writes more than any prompt holds")
            pieces.append(piece)
        return "".join(pieces)
    finally:
        sys.settrace(previous)
