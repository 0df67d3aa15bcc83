"""JSON Schemas of the account fields the API takes, as the auth service's rules
(services/auth/validation.py) define them; tests/http/test_openapi.py keeps the two alike.

Rules a JSON Schema cannot say (a nickname needs a visible character and no control or
format characters) are in the descriptions; the auth service answers 400 `invalid_nickname`.
"""

from __future__ import annotations

from services.http.openapi.declare import JsonSchema

USERNAME_MIN_LENGTH = 3
USERNAME_MAX_LENGTH = 30
PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 256  # characters, in NFKC form
PASSWORD_MAX_CODE_POINTS = 4 * PASSWORD_MAX_LENGTH  # as sent: 256 characters decomposed
NICKNAME_MAX_LENGTH = 30

USERNAME: JsonSchema = {
    "type": "string",
    "pattern": f"^[A-Za-z0-9_.-]{{{USERNAME_MIN_LENGTH},{USERNAME_MAX_LENGTH}}}$",
    "description": "ASCII letters, digits, `_`, `.`, `-`; unique case-insensitively",
}
PASSWORD: JsonSchema = {
    "type": "string",
    "minLength": PASSWORD_MIN_LENGTH,
    "maxLength": PASSWORD_MAX_CODE_POINTS,
    "description": (
        f"{PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} Unicode characters counted in NFKC "
        "form (composed and decomposed forms are one password), sent as at most "
        f"{PASSWORD_MAX_CODE_POINTS} code points; lone surrogates refused (400 "
        "invalid_password); never truncated"
    ),
}
# What a login takes: any string, since one answer covers every credential failure.
ANY_STRING: JsonSchema = {"type": "string"}
NICKNAME: JsonSchema = {
    "type": "string",
    "minLength": 1,
    "maxLength": NICKNAME_MAX_LENGTH,
    "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",  # no control characters (Cc)
    "description": (
        "At least one visible character; no control, format or line-breaking characters "
        "(else 400 invalid_nickname)"
    ),
}
# A signup's nickname: absent or null means "the username" (services.http.bodies.optional_string).
OPTIONAL_NICKNAME: JsonSchema = {
    **NICKNAME,
    "type": ["string", "null"],
    "description": f"{NICKNAME['description']}; absent or null: the username",
}
