"""The small made-up world and the word lists every task draws from: one home for the vocabulary,
so the tokenizer, the text facts, the pictures' words and the spoken words agree."""

PEOPLE = ("Bora", "Keli", "Mato", "Sani", "Tavo", "Rina", "Lupo", "Desa", "Fenn", "Gilo", "Nuri", "Pema")
TOWNS = ("Kelm", "Dorn", "Vask", "Pell", "Tarn", "Mirk")
ANIMALS = ("cat", "dog", "fish", "bird", "horse", "frog")
COLOURS = ("red", "green", "blue", "yellow", "black", "purple")
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS = ("left", "right", "top", "bottom")
# Read from pictures and spoken in clips: every answer word of the world, so each is a token the
# text model has already produced.
WORDS = ANIMALS + COLOURS + SHAPES + TOWNS
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = tuple(str(d) for d in range(10))
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# RGB of each colour name as drawn (on white): far apart, so a colour is never a judgement call.
RGB = {"red": (215, 35, 35), "green": (30, 150, 50), "blue": (35, 70, 220), "yellow": (235, 190, 0),
       "black": (20, 20, 20), "purple": (135, 45, 175)}


# person -> {relation: answer}: who lives where, keeps which pet, likes which colour. Written out
# (the world is data); no relation follows from another.
FACTS = {
    "Bora": {"town": "Kelm", "pet": "frog", "colour": "blue"},
    "Keli": {"town": "Dorn", "pet": "cat", "colour": "yellow"},
    "Mato": {"town": "Vask", "pet": "horse", "colour": "red"},
    "Sani": {"town": "Pell", "pet": "dog", "colour": "purple"},
    "Tavo": {"town": "Tarn", "pet": "bird", "colour": "green"},
    "Rina": {"town": "Mirk", "pet": "fish", "colour": "black"},
    "Lupo": {"town": "Dorn", "pet": "horse", "colour": "green"},
    "Desa": {"town": "Kelm", "pet": "dog", "colour": "red"},
    "Fenn": {"town": "Mirk", "pet": "cat", "colour": "blue"},
    "Gilo": {"town": "Tarn", "pet": "fish", "colour": "yellow"},
    "Nuri": {"town": "Vask", "pet": "frog", "colour": "black"},
    "Pema": {"town": "Pell", "pet": "bird", "colour": "purple"},
}
# Three phrasings per relation: the held-out split keeps some (fact, phrasing) pairs out of training.
FACT_QUESTIONS = {
    "town": ("Where does {p} live?", "In which town does {p} live?", "What is the home town of {p}?"),
    "pet": ("What pet does {p} have?", "Which animal does {p} keep?", "What animal is the pet of {p}?"),
    "colour": ("What is the favourite colour of {p}?", "Which colour does {p} like best?",
               "What colour does {p} love?"),
}
# The spoken form of each relation's question (speech_question): lower case, as a person says it.
SPOKEN_FACT_QUESTIONS = {"town": "where does {p} live", "pet": "what pet does {p} have",
                         "colour": "what is the favourite colour of {p}"}
