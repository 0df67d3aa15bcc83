"""The account rules: what a username, a password and a nickname may contain.

Pure functions without I/O; each refuses bad input with `InvalidField`, whose `reason` the
RPC boundary answers as the `reason` of STATUS_INVALID.

Nicknames are shown to other people, so characters that are invisible or that change how
surrounding text is laid out are refused: every control character (Cc), line and paragraph
separators (Zl, Zp), surrogates (Cs), and format characters (Cf) such as bidi overrides
(U+202E can make a name read backwards), zero-width spaces and byte order marks. Three kinds
of format characters are kept because real names and emoji need them: ZERO WIDTH JOINER
(emoji sequences, Indic scripts), ZERO WIDTH NON-JOINER (Persian, Indic scripts) and the emoji
tag characters that spell subdivision flags.

A nickname must also show something: one made only of characters that render as nothing is
refused (`is_invisible`): whitespace (space separators such as U+0020, U+00A0 and U+3000,
except OGHAM SPACE MARK, which has a glyph), Unicode's default-ignorable code points (among
them the Hangul fillers U+115F, U+1160, U+3164 and U+FFA0, variation selectors, ZWJ, ZWNJ and
the tag characters, all invisible on their own) and BRAILLE PATTERN BLANK (U+2800). One
character outside that set, a letter, a digit, an emoji or even a lone combining accent, makes
the nickname acceptable, invisible characters around it included.
"""

from __future__ import annotations

import re
import unicodedata

USERNAME_MIN_LENGTH = 3
USERNAME_MAX_LENGTH = 30
PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 256
# Code points a password may be sent as: its 256 characters decomposed (NFD sends "é" as two),
# and a bound on normalizing it, which is quadratic in runs of reordered combining marks.
PASSWORD_MAX_CODE_POINTS = 4 * PASSWORD_MAX_LENGTH
NICKNAME_MAX_LENGTH = 30

_USERNAME = re.compile(rf"[A-Za-z0-9_.\-]{{{USERNAME_MIN_LENGTH},{USERNAME_MAX_LENGTH}}}")
# Co: private-use code points render as whatever a font vendor put there, often nothing.
# Unassigned code points (Cn) stay allowed, except the noncharacters: this Python's Unicode
# tables lag the emoji that phones send, and refusing Cn would refuse those.
_REFUSED_NICKNAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_ZERO_WIDTH_NON_JOINER = "\u200c"
_ZERO_WIDTH_JOINER = "\u200d"
_EMOJI_TAGS = range(0xE0020, 0xE0080)
_OGHAM_SPACE_MARK = "\u1680"
_BRAILLE_PATTERN_BLANK = "\u2800"
# Shown blank by every common font though not default-ignorable: BRAILLE PATTERN BLANK,
# MUSICAL SYMBOL NULL NOTEHEAD and KHITAN SMALL SCRIPT FILLER.
_BLANK_GLYPHS = frozenset({_BRAILLE_PATTERN_BLANK, "\U0001d159", "\U00016fe4"})
# Default_Ignorable_Code_Point of Unicode's DerivedCoreProperties.txt (stable since 2006).
_DEFAULT_IGNORABLE = (
    range(0x00AD, 0x00AE),
    range(0x034F, 0x0350),
    range(0x061C, 0x061D),
    range(0x115F, 0x1161),
    range(0x17B4, 0x17B6),
    range(0x180B, 0x1810),
    range(0x200B, 0x2010),
    range(0x202A, 0x202F),
    range(0x2060, 0x2070),
    range(0x3164, 0x3165),
    range(0xFE00, 0xFE10),
    range(0xFEFF, 0xFF00),
    range(0xFFA0, 0xFFA1),
    range(0xFFF0, 0xFFF9),
    range(0x1BCA0, 0x1BCA4),
    range(0x1D173, 0x1D17B),
    range(0xE0000, 0xE1000),
)


class InvalidField(ValueError):
    """A field breaks an account rule. `reason` is machine-readable, `message` is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def validate_username(username: str) -> None:
    if _USERNAME.fullmatch(username) is None:
        raise InvalidField(
            "invalid_username",
            f"a username has {USERNAME_MIN_LENGTH} to {USERNAME_MAX_LENGTH} characters, each an "
            "ASCII letter, a digit, '_', '.' or '-'; choose one that fits",
        )


def validate_password(password: str) -> None:
    # The length counts what is hashed (passwords.py normalizes to NFKC: e + U+0301 is one
    # character); the code points sent are bounded first, as they bound that normalization.
    # The minimum holds for the code points sent too, as the API's schema says (minLength).
    if len(password) > PASSWORD_MAX_CODE_POINTS:
        raise InvalidField(
            "invalid_password",
            f"a password has at most {PASSWORD_MAX_LENGTH} characters, sent as at most"
            f" {PASSWORD_MAX_CODE_POINTS} code points; this one is {len(password)} code points",
        )
    length = len(password)
    if length >= PASSWORD_MIN_LENGTH:
        length = len(unicodedata.normalize("NFKC", password))
    if not PASSWORD_MIN_LENGTH <= length <= PASSWORD_MAX_LENGTH:
        raise InvalidField(
            "invalid_password",
            f"a password has {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters; "
            f"this one has {length}",
        )
    # A str can hold a surrogate code point only unpaired; it has no UTF-8 encoding.
    if any(_is_surrogate(char) for char in password):
        raise InvalidField(
            "invalid_password",
            "the password contains an unpaired UTF-16 surrogate, which is not a character; "
            "send it as valid Unicode text",
        )


def resolve_nickname(nickname: str, username: str) -> str:
    """The nickname to store: `nickname` when it is valid, the username when it is empty."""
    if not nickname:
        return username
    if len(nickname) > NICKNAME_MAX_LENGTH:
        raise InvalidField(
            "invalid_nickname",
            f"a nickname has at most {NICKNAME_MAX_LENGTH} characters, counted as Unicode code "
            f"points (an emoji may count as several); this one has {len(nickname)}",
        )
    for char in nickname:
        if not _allowed_in_nickname(char):
            raise InvalidField(
                "invalid_nickname",
                f"a nickname cannot contain U+{ord(char):04X} (control, format or line-breaking "
                "characters are refused); remove it",
            )
    if all(is_invisible(char) for char in nickname):
        raise InvalidField(
            "invalid_nickname",
            "a nickname needs at least one visible character; this one has only spaces, "
            "filler or other invisible characters",
        )
    return nickname


def is_invisible(char: str) -> bool:
    """Whether `char` renders as nothing on its own: whitespace, a default-ignorable code
    point, or a character whose glyph is blank."""
    if char == _OGHAM_SPACE_MARK:
        return False
    if char.isspace() or char in _BLANK_GLYPHS:
        return True
    code_point = ord(char)
    return any(code_point in block for block in _DEFAULT_IGNORABLE)


def _allowed_in_nickname(char: str) -> bool:
    if _is_noncharacter(char):
        return False
    if unicodedata.category(char) not in _REFUSED_NICKNAME_CATEGORIES:
        return True
    return char in (_ZERO_WIDTH_JOINER, _ZERO_WIDTH_NON_JOINER) or ord(char) in _EMOJI_TAGS


def _is_noncharacter(char: str) -> bool:
    """U+FDD0..U+FDEF and the last two code points of every plane, never assigned."""
    code_point = ord(char)
    return 0xFDD0 <= code_point <= 0xFDEF or code_point & 0xFFFE == 0xFFFE


def _is_surrogate(char: str) -> bool:
    return 0xD800 <= ord(char) <= 0xDFFF
