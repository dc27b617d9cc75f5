"""Text questions: arithmetic, counting a letter, the world's facts, copying and reversing.

Letters are written with spaces between them (`k q m`), so each is one token: the tiny model
then copies, reverses and counts tokens rather than guessing how merges split a string.
Each generator takes a numpy Generator and the side of the split, and returns a Task.
"""

from . import world
from .items import TEXT, Task, draw

MAX_OPERAND = 49  # sums of two numbers up to 49: answers 0..98
MAX_MINUEND = 59


def _letters(rng, count: int) -> list[str]:
    return [world.LETTERS[i] for i in rng.integers(0, len(world.LETTERS), count)]


def add(rng, heldout: bool) -> Task:
    def propose(rng):
        a, b = (int(x) for x in rng.integers(0, MAX_OPERAND + 1, 2))
        return f"add:{a}+{b}", lambda: Task("add", TEXT, f"What is {a} plus {b}?", str(a + b), f"add:{a}+{b}")
    return draw(rng, heldout, propose)


def subtract(rng, heldout: bool) -> Task:
    def propose(rng):
        a = int(rng.integers(0, MAX_MINUEND + 1))
        b = int(rng.integers(0, a + 1))
        key = f"subtract:{a}-{b}"
        return key, lambda: Task("subtract", TEXT, f"What is {a} minus {b}?", str(a - b), key)
    return draw(rng, heldout, propose)


def count_letter(rng, heldout: bool) -> Task:
    def propose(rng):
        length, count = int(rng.integers(5, 9)), int(rng.integers(0, 5))
        target = world.LETTERS[int(rng.integers(0, len(world.LETTERS)))]
        others = [c for c in world.LETTERS if c != target]
        letters = [others[i] for i in rng.integers(0, len(others), length)]
        for position in rng.choice(length, count, replace=False):
            letters[position] = target
        text = " ".join(letters)
        key = f"count:{target}:{text}"
        prompt = f"How many times does {target} appear in: {text}?"
        return key, lambda: Task("count_letter", TEXT, prompt, str(count), key)
    return draw(rng, heldout, propose)


def facts(rng, heldout: bool) -> Task:
    def propose(rng):
        person = world.PEOPLE[int(rng.integers(0, len(world.PEOPLE)))]
        relation = ("town", "pet", "colour")[int(rng.integers(0, 3))]
        phrasing = int(rng.integers(0, len(world.FACT_QUESTIONS[relation])))
        key = f"facts:{person}:{relation}:{phrasing}"
        question = world.FACT_QUESTIONS[relation][phrasing].format(p=person)
        return key, lambda: Task("facts", TEXT, question, world.FACTS[person][relation], key)
    return draw(rng, heldout, propose)


def copy(rng, heldout: bool) -> Task:
    """Letters, or words of the world (every answer word the pictures and clips ask for: the
    text model must have written each one before the adapters can make it write it)."""
    def propose(rng):
        if rng.random() < 0.5:
            text = " ".join(_letters(rng, int(rng.integers(3, 7))))
        else:
            words = world.WORDS + world.POSITIONS + world.DIGITS
            text = " ".join(words[i] for i in rng.integers(0, len(words), int(rng.integers(1, 4))))
        return f"copy:{text}", lambda: Task("copy", TEXT, f"Copy: {text}", text, f"copy:{text}")
    return draw(rng, heldout, propose)


def reverse(rng, heldout: bool) -> Task:
    def propose(rng):
        letters = _letters(rng, int(rng.integers(3, 7)))
        text = " ".join(letters)
        key = f"reverse:{text}"
        return key, lambda: Task("reverse", TEXT, f"Reverse: {text}", " ".join(reversed(letters)), key)
    return draw(rng, heldout, propose)
