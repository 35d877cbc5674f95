"""Caption variants: the forms in which a person names an emoji, generated deterministically from its label.

The corpus captions one image as "grinning face, google style"; people type "grinning face", "an emoji of a
grinning face" or "smiley icon". A scorer trained on one form measures the others badly, so scorer training draws
each image's caption from all of these forms.

    plain_variants("grinning face")            -> ["grinning face", "grinning face emoji", "emoji of grinning face", ...]
    styled_variants("grinning face", "google") -> ["grinning face, google style", "grinning face in google style"]
"""

from __future__ import annotations

import re

_ARTICLES = re.compile(r"\b(a|an|the)\s+", flags=re.IGNORECASE)

# Style-free templates; {name} is the label, {a} its indefinite article ("a" or "an").
STYLE_FREE_TEMPLATES = (
    "{name}",
    "{name} emoji",
    "emoji of {name}",
    "an emoji of {a} {name}",
    "{a} {name}",
    "a picture of {a} {name}",
    "{name} icon",
    "a drawing of {a} {name}",
)
# Templates that name the style; {style} is e.g. "google" or "fluent modern".
STYLED_TEMPLATES = (
    "{name}, {style} style",
    "{name} in {style} style",
)


def indefinite_article(name: str) -> str:
    """ "a" or "an" by the first letter (a spelling rule of thumb, good enough for captions)."""
    return "an" if name[:1].lower() in "aeiou" else "a"


def strip_articles(text: str) -> str:
    """Drop the words "a", "an" and "the": "man in a tuxedo" -> "man in tuxedo"."""
    return " ".join(_ARTICLES.sub("", text).split())


def plain_variants(label: str) -> list[str]:
    """The style-free forms of an emoji's name, deduplicated, in a fixed order (the bare name first)."""
    name = " ".join(label.split())
    names = list(dict.fromkeys([name, strip_articles(name)]))
    return list(dict.fromkeys(t.format(name=n, a=indefinite_article(n)) for n in names for t in STYLE_FREE_TEMPLATES))


def styled_variants(label: str, style: str, canonical: str | None = None) -> list[str]:
    """The forms that name the drawing style ("fluent_modern" reads "fluent modern"); the corpus caption first."""
    name = " ".join(label.split())
    forms = [canonical] if canonical else []
    forms += [t.format(name=name, a=indefinite_article(name), style=style.replace("_", " ")) for t in STYLED_TEMPLATES]
    return list(dict.fromkeys(forms))
