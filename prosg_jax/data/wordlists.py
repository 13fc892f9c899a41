"""Fixed word inventories for the synthetic datasets.

Two kinds of vocabulary live here:

* Plain English filler words, grouped by part of speech, that
  `text_gen.filler_text` strings into grammatical but meaningless sentences for
  the distractor span.
* Syllable inventories from which `text_gen` invents entity names and fact
  values. Invented words are filtered so that none of them occurs inside any
  filler word; that is what makes "the answer never appears in the distractor"
  true by construction.

Changing any list here changes the generated data, so it requires a version bump
of the builders that use it.
"""

# Filler vocabulary: lowercase ASCII letters only. The distractor must never
# contain digits or the bracket/quote characters used to format answers.
DETERMINERS = ("the", "a", "one", "some", "every", "that", "this", "her", "his", "our")

ADJECTIVES = (
    "old", "young", "quiet", "loud", "green", "grey", "brown", "small", "large", "tall",
    "narrow", "wide", "warm", "cold", "bright", "dark", "heavy", "light", "soft", "hard",
    "early", "late", "busy", "empty", "full", "clean", "dusty", "wooden", "stone", "silver",
    "golden", "patient", "careful", "sleepy", "hungry", "gentle", "proud", "simple", "strange",
    "famous", "quick", "slow", "calm", "wild", "tiny", "round", "flat", "sharp", "sweet",
    "bitter", "fresh", "plain", "rough", "smooth", "thin", "thick", "honest", "clever",
    "distant", "nearby",
)  # fmt: skip

NOUNS = (
    "farmer", "teacher", "sailor", "baker", "doctor", "child", "neighbour", "traveller",
    "painter", "gardener", "miller", "shepherd", "driver", "student", "captain", "cousin",
    "river", "mountain", "valley", "forest", "field", "garden", "village", "market", "bridge",
    "road", "harbour", "station", "kitchen", "window", "table", "chair", "basket", "letter",
    "lantern", "blanket", "kettle", "wagon", "horse", "dog", "cat", "goat", "sheep", "bird",
    "owl", "fox", "rabbit", "tree", "flower", "stone", "cloud", "storm", "morning", "evening",
    "winter", "summer", "autumn", "spring", "song", "story", "book", "map", "coat", "hat",
    "boot", "rope", "bell", "clock", "door", "wall", "roof", "path", "hill", "lake", "shore",
    "island", "tower", "castle", "church", "school", "shop", "barn", "fence", "well", "apple",
    "bread", "cheese", "soup", "cup", "plate", "spoon", "candle", "fire", "smoke", "wind",
    "rain", "snow", "leaf", "branch", "seed", "cart", "boat", "net", "fish", "feather",
)  # fmt: skip

TRANSITIVE_VERBS = (
    "carried", "found", "painted", "watched", "followed", "cleaned", "visited", "opened",
    "closed", "fixed", "pushed", "pulled", "lifted", "dropped", "counted", "described",
    "remembered", "noticed", "borrowed", "returned", "washed", "filled", "emptied", "moved",
    "guarded", "built", "mended", "sold", "bought", "shared", "hid", "showed", "brought",
    "collected", "measured", "weighed", "tied", "wrapped", "checked", "studied",
)  # fmt: skip

INTRANSITIVE_VERBS = (
    "waited", "slept", "laughed", "walked", "rested", "sang", "listened", "wandered", "smiled",
    "hurried", "stayed", "paused", "worked", "travelled", "arrived", "returned", "sat", "stood",
    "knelt", "whistled", "shivered", "nodded", "sighed", "danced", "climbed",
)  # fmt: skip

ADVERBS = (
    "slowly", "quietly", "happily", "carefully", "often", "again", "later", "early", "soon",
    "gladly", "gently", "twice", "alone", "together", "outside", "inside", "away", "home",
    "nearby", "briefly",
)  # fmt: skip

PREPOSITIONS = (
    "near", "behind", "beside", "under", "over", "across", "along", "past", "toward", "inside",
    "around", "beyond", "below", "above", "through",
)  # fmt: skip

CONJUNCTIONS = ("and", "but", "so", "while", "because", "before", "after", "until")

# Invented-word inventories. Names are Capitalised C-V-C-V-C (they end in a
# consonant); values are lowercase C-V-C-V-C-V (they end in a vowel), so a name
# and a value can never be the same word.
NAME_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th")
NAME_VOWELS = ("a", "e", "i", "o", "u")
NAME_CODAS = ("n", "r", "k", "s", "l", "x")

VALUE_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
VALUE_VOWELS = ("a", "e", "i", "o", "u")
