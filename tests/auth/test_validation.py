"""The account rules: usernames, passwords and nicknames."""

from __future__ import annotations

import pytest

from services.auth.validation import (
    InvalidField,
    resolve_nickname,
    validate_password,
    validate_username,
)


@pytest.mark.parametrize("username", ["abc", "a" * 30, "Jane.Doe-99_x", "___", "0.-"])
def test_valid_usernames_pass(username: str) -> None:
    validate_username(username)


@pytest.mark.parametrize(
    "username",
    ["", "ab", "a" * 31, "jane doe", "jane@doe", "jané", "abc\n", "ａｂｃ", "abc\x00", "ab/c"],
)
def test_invalid_usernames_are_refused(username: str) -> None:
    with pytest.raises(InvalidField) as refused:
        validate_username(username)
    assert refused.value.reason == "invalid_username"
    assert "3 to 30" in refused.value.message


@pytest.mark.parametrize(
    "password", ["12345678", "x" * 256, "пароль12", "🔑" * 8, "        ", "a\x00bcdefgh"]
)
def test_valid_passwords_pass(password: str) -> None:
    validate_password(password)


@pytest.mark.parametrize("password", ["", "1234567", "x" * 257, "🔑" * 7])
def test_passwords_of_the_wrong_length_are_refused(password: str) -> None:
    with pytest.raises(InvalidField) as refused:
        validate_password(password)
    assert refused.value.reason == "invalid_password"
    assert f"this one has {len(password)}" in refused.value.message


def test_password_length_counts_code_points_not_bytes() -> None:
    validate_password("€" * 256)  # 768 bytes of UTF-8


def test_a_nickname_too_long_in_code_points_says_how_they_are_counted() -> None:
    """Five family emoji look like five characters and are 35 code points (ZWJ sequences)."""
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
    with pytest.raises(InvalidField) as refused:
        resolve_nickname(family * 5, "ann")
    message = refused.value.message
    assert "code points (an emoji may count as several); this one has 35" in message


def test_the_minimum_counts_the_characters_hashed_not_the_code_points_sent() -> None:
    """e + U+0301 is one character once normalized (NFKC) for the hash."""
    with pytest.raises(InvalidField) as refused:
        validate_password("e\u0301" * 7)  # 14 code points, 7 characters
    assert "this one has 7" in refused.value.message
    validate_password("e\u0301" * 8)
    validate_password("e\u0301" * 256)  # 512 code points: 256 characters, the longest


def test_code_points_past_the_bound_are_refused_as_code_points() -> None:
    with pytest.raises(InvalidField) as refused:
        validate_password("e\u0301" * 513)  # 513 characters, 1,026 code points
    assert "this one is 1026 code points" in refused.value.message


def test_emoji_newer_than_this_python_s_unicode_are_taken() -> None:
    """Phones send emoji this Python's Unicode tables lag (U+1FAE8, Unicode 15.0)."""
    validate_password("abcdefg\U0001fae8")


@pytest.mark.parametrize("password", ["abcdefg\ud800", "\udfffabcdefgh"])
def test_passwords_with_lone_surrogates_are_refused(password: str) -> None:
    with pytest.raises(InvalidField) as refused:
        validate_password(password)
    assert refused.value.reason == "invalid_password"
    assert "surrogate" in refused.value.message


def test_empty_nickname_defaults_to_the_username() -> None:
    assert resolve_nickname("", "jane") == "jane"


@pytest.mark.parametrize(
    "nickname",
    [
        "J",
        "Jane Doe",
        "n" * 30,
        "Ĵåñé 🎉",
        "👨\u200d👩\u200d👧",
        "می\u200cخواهم",
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    ],
)
def test_valid_nicknames_are_kept(nickname: str) -> None:
    assert resolve_nickname(nickname, "jane") == nickname


@pytest.mark.parametrize(
    "nickname",
    [
        "n" * 31,
        "tab\there",
        "new\nline",
        "nul\x00",
        "del\x7f",
        "c1\x85",
        "line\u2028sep",
        "para\u2029sep",
        "evil\u202egnp.exe",  # right-to-left override
        "zero\u200bwidth",
        "\ufeffbom",
        "lone\ud800",
    ],
)
def test_invalid_nicknames_are_refused(nickname: str) -> None:
    with pytest.raises(InvalidField) as refused:
        resolve_nickname(nickname, "jane")
    assert refused.value.reason == "invalid_nickname"


@pytest.mark.parametrize(
    "nickname",
    [
        "\u3164",  # HANGUL FILLER
        "\u3164\u3164\u3164",
        "\u115f",  # HANGUL CHOSEONG FILLER
        "\u1160",  # HANGUL JUNGSEONG FILLER
        "\uffa0",  # HALFWIDTH HANGUL FILLER
        "\u2800",  # BRAILLE PATTERN BLANK
        " ",
        "   ",
        "\u00a0",  # NO-BREAK SPACE
        "\u3000",  # IDEOGRAPHIC SPACE
        "\u2003\u202f\u205f",
        "\u200d",  # ZERO WIDTH JOINER, allowed inside a name but not alone
        "\u200c\u200d",
        "\ufe0f",  # VARIATION SELECTOR-16
        "\u034f",  # COMBINING GRAPHEME JOINER
        "\U000e0067\U000e007f",  # tag characters without the flag they belong to
        "\u3164 \u2800\u200d\u115f",
        "\U0001d159",  # MUSICAL SYMBOL NULL NOTEHEAD
        "\U00016fe4",  # KHITAN SMALL SCRIPT FILLER
        "\u1160\U0001d159 ",
    ],
)
def test_nicknames_with_nothing_visible_are_refused(nickname: str) -> None:
    with pytest.raises(InvalidField) as refused:
        resolve_nickname(nickname, "jane")
    assert refused.value.reason == "invalid_nickname"
    assert "visible" in refused.value.message


@pytest.mark.parametrize(
    "nickname",
    ["\ue000", "a\uf8ff", "\U000f0000", "\uffff", "a\ufdd0", "\U0010ffff", "\U0001fffe"],
)
def test_private_use_and_noncharacters_are_refused(nickname: str) -> None:
    with pytest.raises(InvalidField) as refused:
        resolve_nickname(nickname, "jane")
    assert refused.value.reason == "invalid_nickname"


def test_unassigned_code_points_stay_allowed_for_newer_emoji() -> None:
    assert resolve_nickname("a\U0001fae8", "jane") == "a\U0001fae8"  # SHAKING FACE, Unicode 15


@pytest.mark.parametrize(
    "nickname",
    [
        "\u3164a",
        " J ",
        "\u2800\u2801",  # a braille pattern with a dot
        "\u1680",  # OGHAM SPACE MARK has a glyph
        "\u3164\u0301",  # a lone combining accent shows
        "\u3000\u4e2d",
        "\u2764\ufe0f",  # red heart with its emoji selector
        ".",
    ],
)
def test_one_visible_character_is_enough(nickname: str) -> None:
    assert resolve_nickname(nickname, "jane") == nickname


def test_nickname_error_names_the_offending_character() -> None:
    with pytest.raises(InvalidField, match="U\\+202E"):
        resolve_nickname("abc\u202e", "jane")


def test_invalid_field_is_a_value_error_with_the_message() -> None:
    error = InvalidField("invalid_username", "pick another")
    assert isinstance(error, ValueError)
    assert str(error) == "pick another"
