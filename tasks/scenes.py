"""Rendered pictures and the questions about them: shapes, colours, counts, positions, and
numbers and words drawn in the picture to read back.

Pictures come in several sizes and aspect ratios, so the HD tiling makes from one to four
crops of them (a 112-pixel crop: 320x100 is three crops side by side, 200x150 a 2x2 grid half
padded). A scene is a frozen value: its repr is the held-out key, `render` draws it with
Pillow's bundled font (no font file needed, the same pixels on every machine with this Pillow).
"""

from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from . import world
from .items import IMAGE, Task, draw

SIZES = ((112, 112), (96, 80), (224, 112), (112, 224), (224, 224), (200, 150), (320, 100))
ROOMY_SIZES = ((224, 112), (112, 224), (224, 224), (200, 150))  # room for up to seven shapes of 11+ pixels
SQUARISH_SIZES = ((112, 112), (96, 80), (224, 224), (200, 150))  # left/right/top/bottom read the same way
BACKGROUND = (255, 255, 255)
MAX_COUNT = 5
MIN_NUMBER, MAX_NUMBER = 10, 999  # numbers drawn in pictures: two or three digits
CHARACTER_WIDTH = 0.55  # the bundled font's mean advance, in font sizes
MIN_FONT_SIZE = 16  # pixels: a glyph spans at least a patch (14 pixels) at the crops' resolution


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    x: int  # centre, pixels
    y: int
    radius: int


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    shapes: tuple = ()
    text: str = ""
    text_colour: str = "black"
    text_x: int = 0  # top-left of the text, pixels
    text_y: int = 0
    font_size: int = 0


def _outline(shape: Shape) -> list[tuple[float, float]]:
    x, y, r = shape.x, shape.y, shape.radius
    if shape.kind == "square":
        s = 0.85 * r
        return [(x - s, y - s), (x + s, y - s), (x + s, y + s), (x - s, y + s)]
    if shape.kind == "triangle":
        return [(x, y - r), (x + 0.95 * r, y + 0.75 * r), (x - 0.95 * r, y + 0.75 * r)]
    if shape.kind == "diamond":
        return [(x, y - r), (x + 0.75 * r, y), (x, y + r), (x - 0.75 * r, y)]
    raise ValueError(f"unknown shape {shape.kind!r}")


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB picture."""
    image = Image.new("RGB", (scene.width, scene.height), BACKGROUND)
    pen = ImageDraw.Draw(image)
    for shape in scene.shapes:
        fill = world.RGB[shape.colour]
        if shape.kind == "circle":
            r = shape.radius
            pen.ellipse((shape.x - r, shape.y - r, shape.x + r, shape.y + r), fill=fill)
        else:
            pen.polygon(_outline(shape), fill=fill)
    if scene.text:
        font = ImageFont.load_default(size=scene.font_size)
        pen.text((scene.text_x, scene.text_y), scene.text, fill=world.RGB[scene.text_colour], font=font)
    return image


def pick_size(rng, sizes=SIZES) -> tuple[int, int]:
    return sizes[int(rng.integers(0, len(sizes)))]


def _choice(rng, options):
    return options[int(rng.integers(0, len(options)))]


def place_shapes(rng, width: int, height: int, kinds_colours: list, radius_share=(0.09, 0.13), tries: int = 200):
    """Shapes of the given (kind, colour) at random non-overlapping spots, or None."""
    low, high = (int(s * min(width, height)) for s in radius_share)
    placed = []
    for kind, colour in kinds_colours:
        for _ in range(tries):
            r = int(rng.integers(max(low, 6), max(high, 7) + 1))
            x, y = int(rng.integers(r + 2, width - r - 1)), int(rng.integers(r + 2, height - r - 1))
            if all((x - s.x) ** 2 + (y - s.y) ** 2 > (r + s.radius + 4) ** 2 for s in placed):
                placed.append(Shape(kind, colour, x, y, r))
                break
        else:
            return None
    return tuple(placed)


def caption(scene: Scene) -> str:
    """What the picture shows, as words: each shape's colour and kind, and the text drawn (digits
    one by one). Training's target for the vision encoder's pretraining."""
    words = [f"{shape.colour} {shape.kind}" for shape in scene.shapes]
    if scene.text:
        words.append(" ".join(scene.text) if scene.text.isdigit() else scene.text)
    return " ".join(words)


def _scene_task(kind: str, prompt: str, answer: str, scene: Scene) -> Task:
    return Task(kind, IMAGE, "<|image_1|>" + prompt, answer, f"{kind}:{scene!r}", images=[render(scene)],
                transcript=f"{caption(scene)} {answer}")


def _propose_scene(kind, make_scene):
    """A proposer for `draw`: `make_scene(rng)` -> (scene, prompt, answer) or None (try again)."""
    def propose(rng):
        made = None
        while made is None:
            made = make_scene(rng)
        scene, prompt, answer = made
        return f"{kind}:{scene!r}", lambda: _scene_task(kind, prompt, answer, scene)
    return propose


def vision_shape(rng, heldout: bool) -> Task:
    def make(rng):
        width, height = pick_size(rng)
        shape = _choice(rng, world.SHAPES)
        shapes = place_shapes(rng, width, height, [(shape, _choice(rng, world.COLOURS))], (0.2, 0.32))
        return shapes and (Scene(width, height, shapes), "What shape is in the picture?", shape)
    return draw(rng, heldout, _propose_scene("vision_shape", make))


def vision_colour(rng, heldout: bool) -> Task:
    def make(rng):
        width, height = pick_size(rng)
        shape, colour = _choice(rng, world.SHAPES), _choice(rng, world.COLOURS)
        wanted = [(shape, colour)]
        if rng.random() < 0.5:  # a second shape of another kind and colour: the question picks one
            wanted.append((_choice(rng, [s for s in world.SHAPES if s != shape]),
                           _choice(rng, [c for c in world.COLOURS if c != colour])))
        shapes = place_shapes(rng, width, height, wanted, (0.14, 0.22))
        return shapes and (Scene(width, height, shapes), f"What colour is the {shape}?", colour)
    return draw(rng, heldout, _propose_scene("vision_colour", make))


def vision_count(rng, heldout: bool) -> Task:
    def make(rng):
        width, height = pick_size(rng, ROOMY_SIZES)
        shape, count = _choice(rng, world.SHAPES), int(rng.integers(1, MAX_COUNT + 1))
        others = [s for s in world.SHAPES if s != shape]
        wanted = [(shape, _choice(rng, world.COLOURS)) for _ in range(count)]
        wanted += [(_choice(rng, others), _choice(rng, world.COLOURS)) for _ in range(int(rng.integers(0, 3)))]
        shapes = place_shapes(rng, width, height, [wanted[i] for i in rng.permutation(len(wanted))], (0.1, 0.13))
        return shapes and (Scene(width, height, shapes), f"How many {shape}s are there?", str(count))
    return draw(rng, heldout, _propose_scene("vision_count", make))


def vision_position(rng, heldout: bool) -> Task:
    def make(rng):
        width, height = pick_size(rng, SQUARISH_SIZES)
        shape, position = _choice(rng, world.SHAPES), _choice(rng, world.POSITIONS)
        r = int(rng.uniform(0.12, 0.18) * min(width, height))
        near, middle = rng.uniform(0.08, 0.22), rng.uniform(0.35, 0.65)
        x, y = {"left": (near, middle), "right": (1 - near, middle), "top": (middle, near),
                "bottom": (middle, 1 - near)}[position]
        x = min(max(int(x * width), r + 1), width - r - 2)
        y = min(max(int(y * height), r + 1), height - r - 2)
        scene = Scene(width, height, (Shape(shape, _choice(rng, world.COLOURS), x, y, r),))
        return scene, f"Where is the {shape}?", position
    return draw(rng, heldout, _propose_scene("vision_position", make))


def _text_scene(rng, text: str) -> Scene | None:
    """`text` drawn large enough to read at the crops' resolution (40-85% of the width, at most
    60% of the height, 16 pixels or more), somewhere inside the picture; None if it cannot fit."""
    width, height = pick_size(rng)
    per_character = CHARACTER_WIDTH * len(text)
    font_size = int(min(rng.uniform(0.4, 0.85) * width / per_character, 0.6 * height))
    if font_size < MIN_FONT_SIZE:
        return None
    left, top, right, bottom = ImageFont.load_default(size=font_size).getbbox(text)
    if right - left + 4 > width or bottom - top + 4 > height:
        return None
    x = int(rng.integers(2 - left, width - right - 1))
    y = int(rng.integers(2 - top, height - bottom - 1))
    colour = _choice(rng, ("black", "black", "blue", "red", "purple", "green"))
    return Scene(width, height, text=text, text_colour=colour, text_x=x, text_y=y, font_size=font_size)


def vision_digits(rng, heldout: bool) -> Task:
    """The key is the number alone: a held-out number is never drawn in training, in any picture."""
    def propose(rng):
        number = str(int(rng.integers(MIN_NUMBER, MAX_NUMBER + 1)))

        def make():
            scene = None
            while scene is None:
                scene = _text_scene(rng, number)
            return _scene_task("vision_digits", "What number is written in the picture?", number, scene)
        return f"vision_digits:{number}", make
    task = draw(rng, heldout, propose)
    task.key = f"vision_digits:{task.answer}"
    return task


def vision_word(rng, heldout: bool) -> Task:
    def make(rng):
        word = _choice(rng, world.WORDS)
        scene = _text_scene(rng, word)
        return scene and (scene, "What word is written in the picture?", word)
    return draw(rng, heldout, _propose_scene("vision_word", make))
