"""Default pictures: deterministic symmetric identicons as 256x256 SVG."""

from __future__ import annotations

from xml.etree import ElementTree

from services.http.avatars.identicons import identicon_svg

SVG = "{http://www.w3.org/2000/svg}"


def test_the_same_seed_draws_the_same_picture_and_seeds_differ() -> None:
    assert identicon_svg("42") == identicon_svg("42")
    assert len({identicon_svg(str(seed)) for seed in range(50)}) == 50


def test_it_is_a_256_square_svg_without_script_or_text() -> None:
    root = ElementTree.fromstring(identicon_svg("42"))
    assert root.tag == f"{SVG}svg"
    assert (root.get("width"), root.get("height")) == ("256", "256")
    tags = {element.tag.removeprefix(SVG) for element in root.iter()}
    assert tags <= {"svg", "rect", "path"}


def test_the_pattern_is_mirrored() -> None:
    for seed in range(20):
        path = ElementTree.fromstring(identicon_svg(str(seed))).find(f"{SVG}path")
        assert path is not None
        cells = {
            tuple(map(int, cell.split("h")[0].split()))
            for cell in path.get("d", "").split("M")
            if cell
        }
        assert cells == {(4 - x, y) for x, y in cells}, seed
        assert all(0 <= x <= 4 and 0 <= y <= 4 for x, y in cells)
