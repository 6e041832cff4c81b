"""Question pairs for the semantic cache's tests and for choosing its default threshold.

PARAPHRASES ask the same thing in other words (a cached answer is right for both); NEAR_MISSES
differ in one fact or intent (a cached answer would be wrong), in several languages. Cosines with
multilingual-e5-small as the cache composes them (history weight 0.3): paraphrases 0.986-0.996,
near misses 0.78-0.962, and 0.9995 for the pair whose words only change order (refused by the
word-order guard). LOOSE_PARAPHRASES are right to share an answer but score 0.965-0.973: near the
default threshold (0.97), asserted neither way; they are what a stricter threshold costs.
"""

PARAPHRASES = [
    ("What is the capital of France?", "Which city is the capital of France?"),
    ("How do I reverse a list in Python?", "How can I reverse a Python list?"),
    ("Explain photosynthesis in simple terms.", "Explain photosynthesis simply."),
    ("Give me three tips for better sleep.", "Share three tips to sleep better."),
    ("How many legs does a spider have?", "How many legs do spiders have?"),
    ("Who wrote Romeo and Juliet?", "Who is the author of Romeo and Juliet?"),
    ("Was ist die Hauptstadt von Deutschland?", "Welche Stadt ist die Hauptstadt Deutschlands?"),
    ("Wie viele Beine hat eine Spinne?", "Wie viele Beine haben Spinnen?"),
    ("Quelle est la capitale de la France ?", "Quelle ville est la capitale de la France ?"),
    ("¿Cuál es la capital de España?", "¿Qué ciudad es la capital de España?"),
    ("Qual é a capital do Brasil?", "Qual cidade é a capital do Brasil?"),
]

LOOSE_PARAPHRASES = [
    ("What is the speed of light?", "How fast does light travel?"),
    ("How do I convert a string to an integer in Python?", "How can I turn a string into an int in Python?"),
    ("What year did World War II end?", "In which year did the Second World War end?"),
]

NEAR_MISSES = [
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("How do I reverse a list in Python?", "How do I sort a list in Python?"),
    ("Explain photosynthesis in simple terms.", "Explain cellular respiration in simple terms."),
    ("What is the boiling point of water at sea level?", "What is the freezing point of water at sea level?"),
    ("Translate 'good morning' into Spanish.", "Translate 'good morning' into French."),
    ("Give me three tips for better sleep.", "Give me three tips for better focus."),
    ("How many legs does a spider have?", "How many legs does an ant have?"),
    ("Who wrote Romeo and Juliet?", "Who wrote Hamlet?"),
    ("How do I convert a string to an integer in Python?", "How do I convert an integer to a string in Python?"),
    ("What year did World War II end?", "What year did World War I end?"),
    ("Is it safe to eat raw eggs?", "Is it safe to eat raw chicken?"),
    ("Wie spät ist es in Tokio?", "Wie spät ist es in Berlin?"),
    ("Was ist die Hauptstadt von Deutschland?", "Was ist die Hauptstadt von Österreich?"),
    ("Quelle est la capitale de la France ?", "Quelle est la capitale de l'Italie ?"),
    ("¿Cuál es la capital de España?", "¿Cuál es la capital de Portugal?"),
    ("Qual é a capital do Brasil?", "Qual é a capital da Argentina?"),
    ("Write a haiku about autumn.", "What is the GDP of Japan?"),
    ("continue", "Write a haiku about autumn."),
]
