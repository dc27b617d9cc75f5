"""The chat template renders under a time and size budget (runtime/chat_template.py): an
artifact's template is code, and one that loops forever or builds gigabytes must fail with a
clear error, neither hanging the model thread nor exhausting its memory. Each bomb below is a
case an independent probe ran against the landed tree (issue 32: nested loops hung `run`; `~`,
`%` formatting and `center` reached 3.4 GB)."""

import time

import jinja2
import pytest

from phi4mm_edge.runtime.chat_template import MAX_RENDERED_CHARS, BoundedSandbox, TemplateBudgetError, render

BOMBS = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "concatenation doubled": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                             "{% endfor %}{{ ns.s }}",
    "percent width": "{{ '%0999999999d' % 1 }}",
    "center": "{{ 'a' | center(1000000000) }}",
    "format filter width": "{{ '%-999999999s' | format('a') }}",
    "str.format width": "{{ '{:>999999999}'.format(1) }}",
    "ljust method": "{{ 'a'.ljust(1000000000) }}",
    "replace expansion": "{{ ('x' * 3000) | replace('', 'y' * 3000) }}",
    "replace method": "{{ ('x' * 3000).replace('x', 'y' * 3000) }}",
    "list doubled": "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
    "repeat": "{{ 'ab' * 100000 * 100000 }}",
    "join of a long list": "{{ ((range(100000) | list) * 100) | join(',') }}",
}


def template(source: str) -> jinja2.Template:
    return BoundedSandbox(trim_blocks=True, lstrip_blocks=True).from_string(source)


@pytest.mark.parametrize("name", BOMBS)
def test_a_template_bomb_stops_within_the_budget(name):
    """Each bomb raises TemplateBudgetError, within the 2 s time budget plus slack for a busy machine
    (a real template renders in milliseconds; the nested loops alone would run for hours)."""
    started = time.perf_counter()
    with pytest.raises(TemplateBudgetError):
        render(template(BOMBS[name]), seconds=2.0, messages=[])
    assert time.perf_counter() - started < 10


def test_an_ordinary_template_renders_as_jinja_does():
    """The bounds change nothing for a real template: Phi-4's format, with filters, methods,
    `~` and `%`, renders to the same text as Jinja's own immutable sandbox."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    source = ("{% for m in messages %}{{ '<|' ~ m['role'] ~ '|>' + m['content'] | trim + '<|end|>' }}{% endfor %}"
              "{{ '%s-%03d' % ('n', messages | length) }}{{ 'x'.center(7) }}{{ 'a,b'.replace(',', ';') }}"
              "{{ '{}!'.format('ok') }}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    variables = dict(messages=[{"role": "user", "content": " hi " * 1000}, {"role": "assistant", "content": "yo"}],
                     add_generation_prompt=True)
    expected = (ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)
                .render(**variables))
    assert render(template(source), **variables) == expected


def test_output_up_to_the_cap_is_allowed():
    """The cap is MAX_RENDERED_CHARS, the longest prompt with margin, not less: a template may
    write that much (131072 tokens is ~0.5 M characters)."""
    assert len(render(template("{{ 'x' * n }}"), n=MAX_RENDERED_CHARS)) == MAX_RENDERED_CHARS
