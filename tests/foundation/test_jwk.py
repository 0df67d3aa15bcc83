from services.foundation.jwk import legacy_kid, public_jwk, thumbprint_kid


def test_the_thumbprint_matches_rfc_8037_appendix_a3() -> None:
    # RFC 8037 A.1's public key, whose thumbprint A.3 gives.
    raw = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    assert public_jwk(raw)["x"] == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert thumbprint_kid(raw) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_the_legacy_kid_is_the_old_prefix_and_differs_from_the_thumbprint() -> None:
    raw = bytes(range(32))
    assert len(legacy_kid(raw)) == 16
    assert legacy_kid(raw) != thumbprint_kid(raw)
    assert "d" not in public_jwk(raw, "kid")
