"""Speech for the synthetic talking-portrait data: espeak-ng voices reading random sentences, and sung syllables.

``random_utterance(rng)`` draws a voice (a language voice, a male/female variant,
a rate, a pitch, a loudness, a word gap), and either a sentence of
common English words read aloud or a melody of sung syllables (SSML prosody: one pitch
and length per syllable), synthesises it with espeak-ng and returns 16 kHz
float32 samples. Deterministic from the generator's state (espeak-ng is
deterministic for the same arguments).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from emote.bundle import SAMPLE_RATE

# Voices: accents of English and other languages reading English text (their phoneme sets differ)
LANGUAGES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "de", "fr-fr", "es", "it", "nl", "pt-br", "pl", "sv", "hi")
VARIANTS = (  # espeak-ng's voice variants (file names under voices/!v)
    "",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "Andrea",
    "Annie",
    "Alicia",
    "belinda",
    "benjamin",
    "david",
    "Gene",
    "Hugo",
    "linda",
    "max",
    "Michael",
    "Mike",
    "paul",
    "robert",
    "steph",
    "anika",
    "grandma",
    "grandpa",
    "klatt",
    "klatt3",
    "shelby",
    "travis",
    "norbert",
)
WORDS = [
    "the",
    "a",
    "one",
    "two",
    "three",
    "some",
    "every",
    "this",
    "that",
    "my",
    "your",
    "our",
    "their",
    "his",
    "her",
    "its",
    "we",
    "you",
    "they",
    "i",
    "he",
    "she",
    "it",
    "time",
    "year",
    "people",
    "way",
    "day",
    "man",
    "woman",
    "child",
    "world",
    "life",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "foot",
    "boy",
    "age",
    "policy",
    "music",
    "market",
    "sense",
    "nation",
    "plan",
    "college",
    "interest",
    "death",
    "experience",
    "effect",
    "class",
    "control",
    "care",
    "field",
    "development",
    "role",
    "effort",
    "rate",
    "heart",
    "drug",
    "show",
    "leader",
    "light",
    "voice",
    "wife",
    "police",
    "mind",
    "price",
    "report",
    "decision",
    "son",
    "view",
    "relationship",
    "town",
    "road",
    "say",
    "get",
    "make",
    "go",
    "know",
    "take",
    "see",
    "come",
    "think",
    "look",
    "want",
    "give",
    "use",
    "find",
    "tell",
    "ask",
    "seem",
    "feel",
    "try",
    "leave",
    "call",
    "keep",
    "let",
    "begin",
    "help",
    "talk",
    "turn",
    "start",
    "show",
    "hear",
    "play",
    "run",
    "move",
    "like",
    "live",
    "believe",
    "hold",
    "bring",
    "happen",
    "write",
    "sit",
    "stand",
    "lose",
    "pay",
    "meet",
    "include",
    "continue",
    "set",
    "learn",
    "lead",
    "understand",
    "watch",
    "follow",
    "stop",
    "create",
    "speak",
    "read",
    "allow",
    "add",
    "spend",
    "grow",
    "open",
    "walk",
    "win",
    "offer",
    "remember",
    "love",
    "consider",
    "appear",
    "buy",
    "wait",
    "serve",
    "die",
    "send",
    "expect",
    "build",
    "stay",
    "fall",
    "cut",
    "reach",
    "kill",
    "remain",
    "suggest",
    "raise",
    "pass",
    "sell",
    "require",
    "decide",
    "return",
    "explain",
    "hope",
    "good",
    "new",
    "first",
    "last",
    "long",
    "great",
    "little",
    "own",
    "other",
    "old",
    "big",
    "high",
    "different",
    "small",
    "large",
    "next",
    "early",
    "young",
    "important",
    "few",
    "public",
    "bad",
    "same",
    "able",
    "free",
    "sure",
    "happy",
    "warm",
    "bright",
    "quiet",
    "simple",
    "strong",
    "clear",
    "deep",
    "open",
    "really",
    "very",
    "also",
    "just",
    "now",
    "then",
    "here",
    "there",
    "always",
    "never",
    "often",
    "today",
    "again",
    "still",
    "almost",
    "soon",
    "together",
    "and",
    "but",
    "or",
    "because",
    "if",
    "when",
    "while",
    "so",
    "after",
    "before",
    "about",
    "with",
    "from",
    "into",
    "over",
    "under",
    "through",
    "between",
    "hello",
    "yes",
    "no",
    "please",
    "thanks",
    "maybe",
    "okay",
    "sorry",
    "welcome",
    "goodbye",
    "morning",
    "evening",
    "tonight",
    "tomorrow",
    "yesterday",
]
SYLLABLES = ("la", "na", "da", "ma", "ta", "loo", "noo", "oh", "ah", "ee", "yeah", "hey", "la la", "do", "re", "mi", "fa", "so", "ti")


@dataclass(frozen=True)
class Utterance:
    text: str  # what espeak-ng was given (SSML for sung utterances)
    voice: str  # espeak-ng -v argument
    rate: int  # words per minute
    pitch: int  # 0..99
    gap: int  # extra pause between words, 10 ms units
    amplitude: int  # 0..200
    sung: bool


def random_sentence(rng: np.random.Generator, words: tuple[int, int] = (4, 11)) -> str:
    n = int(rng.integers(*words))
    picked = [WORDS[int(i)] for i in rng.integers(len(WORDS), size=n)]
    # commas and a final mark make espeak-ng pause and change intonation, as people do
    out = []
    for i, w in enumerate(picked):
        out.append(w + ("," if i < n - 1 and rng.random() < 0.12 else ""))
    return " ".join(out).capitalize() + str(rng.choice([".", ".", "!", "?"]))


def random_melody(rng: np.random.Generator, notes: tuple[int, int] = (4, 10)) -> str:
    """SSML: syllables on a melody (a random walk over a pentatonic scale), each with its own length."""
    scale = np.array([0, 2, 4, 7, 9, 12, 14, 16])  # semitones
    step = int(rng.integers(len(scale) // 2))
    parts = []
    for _ in range(int(rng.integers(*notes))):
        step = int(np.clip(step + rng.integers(-2, 3), 0, len(scale) - 1))
        semis = int(scale[step]) - 6
        pitch = int(round(100 * (2 ** (semis / 12) - 1)))  # percent change from the voice's pitch
        rate = int(rng.choice([35, 50, 65, 80]))  # percent of normal speed: sung notes are long
        syl = SYLLABLES[int(rng.integers(len(SYLLABLES)))]
        parts.append(f'<prosody pitch="{pitch:+d}%" rate="{rate}%">{syl}</prosody>')
        if rng.random() < 0.25:
            parts.append(f'<break time="{int(rng.integers(80, 300))}ms"/>')
    return "<speak>" + " ".join(parts) + "</speak>"


def random_utterance(rng: np.random.Generator, sung_fraction: float = 0.2) -> Utterance:
    lang = LANGUAGES[int(rng.integers(len(LANGUAGES)))]
    variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
    sung = bool(rng.random() < sung_fraction)
    return Utterance(
        text=random_melody(rng) if sung else random_sentence(rng),
        voice=lang + (f"+{variant}" if variant else ""),
        rate=int(rng.integers(110, 230)),
        pitch=int(rng.integers(15, 85)),
        gap=int(rng.integers(0, 6)),
        amplitude=int(rng.integers(60, 160)),
        sung=sung,
    )


def espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng (the training data needs it)")
    return exe


def synthesize(u: Utterance) -> np.ndarray:
    """espeak-ng's audio of ``u`` at 16 kHz float32 (resampled with soxr)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        cmd = [espeak(), "-v", u.voice, "-s", str(u.rate), "-p", str(u.pitch), "-g", str(u.gap), "-a", str(u.amplitude), "-w", str(wav)]
        if u.sung:
            cmd.append("-m")  # SSML markup
        subprocess.run(cmd + [u.text], check=True, capture_output=True)
        data, rate = sf.read(wav, dtype="float32", always_2d=True)
    return soxr.resample(data[:, 0], rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
