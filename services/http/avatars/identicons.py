"""Default profile pictures: a symmetric 5x5 identicon drawn from a seed, as SVG.

The same seed always gives the same picture (it is served as immutable), and the picture
needs no font, so it renders the same everywhere.
"""

from __future__ import annotations

import colorsys
import hashlib

SIZE = 256
_GRID = 5
# Margin around the grid, in cells: 1.5 keeps the grid's corners inside the circle that pages
# crop pictures to.
_MARGIN = 1.5


def _hex_colour(hue: float, lightness: float, saturation: float) -> str:
    red, green, blue = colorsys.hls_to_rgb(hue, lightness, saturation)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def identicon_svg(seed: str) -> bytes:
    digest = hashlib.sha256(seed.encode()).digest()
    hue = digest[0] / 256
    foreground = _hex_colour(hue, 0.45, 0.55)
    background = _hex_colour(hue, 0.93, 0.40)
    bits = int.from_bytes(digest[1:3], "big")
    cells = []
    half = (_GRID + 1) // 2
    for row in range(_GRID):
        for column in range(half):
            if bits >> (row * half + column) & 1:
                for x in sorted({column, _GRID - 1 - column}):  # mirrored left to right
                    cells.append(f"M{x} {row}h1v1h-1z")
    box = _GRID + 2 * _MARGIN
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" '
        f'viewBox="-{_MARGIN} -{_MARGIN} {box} {box}" shape-rendering="crispEdges">'
        f'<rect x="-{_MARGIN}" y="-{_MARGIN}" width="{box}" height="{box}" fill="{background}"/>'
        f'<path fill="{foreground}" d="{"".join(cells)}"/></svg>'
    )
    return svg.encode()
