"""Fonts for class names in figures: matplotlib's default font (DejaVu Sans) has no CJK glyphs, so
Chinese, Japanese or Korean names come out as boxes. When an installed font has the glyphs, it becomes
matplotlib's fallback family; when none has, one warning says so and matplotlib's own warning per
missing glyph is silenced."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import matplotlib
from matplotlib import font_manager
from matplotlib.ft2font import FT2Font

log = logging.getLogger(__name__)

# Families with CJK glyphs (Debian/Ubuntu: fonts-noto-cjk, fonts-wqy-zenhei, fonts-droid-fallback...),
# tried first, most complete first; any other installed font that has the glyphs comes after.
PREFERRED_FAMILIES = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "Noto Sans SC",
    "Noto Sans JP",
    "Noto Sans KR",
    "AR PL UMing CN",
    "IPAGothic",
    "NanumGothic",
)
# matplotlib's own stand-in: a box with the code point for every character, which "has" them all.
PLACEHOLDER_FONT = "Last Resort"
# matplotlib warns once per character it cannot draw ("Glyph 29483 (...) missing from font(s) ...").
GLYPH_WARNING = r"Glyph \d+ .* missing from font"

_warned: list[str] = []  # the characters of the one warning a process gives


@functools.cache
def font_characters(path: str) -> frozenset[int]:
    """The code points the font file at `path` has glyphs for (empty when it cannot be read)."""
    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def font_list_file() -> Path:
    """matplotlib's cached list of installed fonts: a font installed after it was written is not
    seen until it is deleted."""
    return Path(matplotlib.get_cachedir()) / f"fontlist-v{font_manager.FontManager.__version__}.json"


def default_font_path() -> str:
    return font_manager.findfont(font_manager.FontProperties(), fallback_to_default=True)


def characters_without_glyph(texts: Iterable[str]) -> set[str]:
    """The characters of `texts` that matplotlib's default font cannot draw."""
    known = font_characters(default_font_path())
    return {
        c for text in texts for c in str(text) if c.isprintable() and not c.isspace() and ord(c) not in known
    }


@functools.cache
def family_with_glyphs(characters: frozenset[str]) -> str | None:
    """The name of an installed font family that has every one of `characters`, None when none has."""
    fonts = {
        entry.fname: entry.name
        for entry in font_manager.fontManager.ttflist
        if not entry.name.startswith(PLACEHOLDER_FONT)
    }
    rank = {name: i for i, name in enumerate(PREFERRED_FAMILIES)}
    wanted = {ord(c) for c in characters}
    for path, name in sorted(
        fonts.items(), key=lambda item: (rank.get(item[1], len(rank)), item[1], item[0])
    ):
        if wanted <= font_characters(path):
            return name
    return None


def use_fonts_for(texts: Iterable[str]) -> None:
    """Let matplotlib draw `texts` (class names, titles), for every figure drawn after this call.

    Characters the default font lacks are drawn with an installed font that has them, appended to
    rcParams["font.family"] as a fallback (matplotlib >= 3.6 takes glyphs from the next family of
    the list). Without one, one warning (the first time in a process) says those names show as
    boxes, and matplotlib's warning per missing glyph is silenced (it repeats for every character).
    """
    missing = frozenset(characters_without_glyph(texts))
    if not missing:
        return
    family = family_with_glyphs(missing)
    if family is not None:
        families = list(matplotlib.rcParams["font.family"])
        if family not in families:
            matplotlib.rcParams["font.family"] = [*families, family]
        return
    warnings.filterwarnings("ignore", message=GLYPH_WARNING, category=UserWarning)
    if not _warned:
        _warned.append("".join(sorted(missing)[:10]))
        log.warning(
            "no installed font has the characters %s%s of the class names, so figures show them as"
            " boxes: install one (e.g. Debian's fonts-noto-cjk for CJK names) and delete %s, matplotlib's"
            " list of fonts, for it to be used",
            _warned[0],
            "..." if len(missing) > 10 else "",
            font_list_file(),
        )
