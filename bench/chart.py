#!/usr/bin/env python3
"""A grouped bar chart as SVG, with no dependencies: CallHome against Nchan, Nchan = 1.0.

bench/summarize.py calls `render()`. Run alone, it draws a demo chart:

    python3 bench/chart.py > /tmp/demo.svg
"""

import math
from html import escape

WIDTH = 820
HEIGHT = 420
LEFT = 60  # room for the y axis labels
RIGHT = 20
TOP = 84  # room for the title and legend
BOTTOM = 84  # room for the group labels
CALLHOME_MET = "#2b7bb9"
CALLHOME_MISSED = "#d9534f"
NCHAN = "#9e9e9e"
TARGET = "#333333"


def _nice_top(value):
    """The smallest of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 (times a power of ten) >= value."""
    scale = 10.0 ** math.floor(math.log10(value))
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if value <= step * scale * (1 + 1e-9):
            return step * scale
    return 10 * scale


def render(groups, title, subtitle=""):
    """`groups`: dicts with `label` (list of lines), `ratio` (CallHome / Nchan, or None when
    not measured), `target` (the ratio to reach), `better` ("lower" or "higher") and `met`
    (bool or None). Returns the SVG text."""
    ratios = [g["ratio"] for g in groups if g["ratio"] is not None]
    top = _nice_top(max([1.0] + [g["target"] for g in groups] + ratios) * 1.12)
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    base_y = TOP + plot_h

    def y_of(v):
        return base_y - plot_h * min(v, top) / top

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif" '
        f'font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{escape(title)}</text>',
    ]
    if subtitle:
        out.append(
            f'<text x="{WIDTH / 2}" y="40" text-anchor="middle" fill="#555">'
            f"{escape(subtitle)}</text>"
        )

    # Gridlines and y labels at five steps.
    for i in range(6):
        v = top * i / 5
        y = y_of(v)
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
            f'stroke="#e5e5e5"/>'
        )
        out.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">'
            f"{v:.2f}×</text>"
        )
    out.append(
        f'<text transform="translate(16 {TOP + plot_h / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle" fill="#555">CallHome / Nchan (Nchan = 1.0)</text>'
    )

    # Legend.
    lx = LEFT + 8
    ly = 64
    for color, name in (
        (NCHAN, "Nchan"),
        (CALLHOME_MET, "CallHome, target met"),
        (CALLHOME_MISSED, "CallHome, target missed"),
    ):
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{lx + 17}" y="{ly + 1}">{escape(name)}</text>')
        lx += 32 + 6.6 * len(name)
    out.append(
        f'<line x1="{lx}" y1="{ly - 3}" x2="{lx + 26}" y2="{ly - 3}" stroke="{TARGET}" '
        f'stroke-width="2" stroke-dasharray="5,3"/>'
    )
    out.append(f'<text x="{lx + 31}" y="{ly + 1}">target</text>')

    group_w = plot_w / max(1, len(groups))
    bar_w = min(54.0, group_w * 0.3)
    for i, g in enumerate(groups):
        gx = LEFT + group_w * i
        cx = gx + group_w / 2
        bars = ((cx - bar_w - 3, 1.0, NCHAN, False), (cx + 3, g["ratio"], None, True))
        for x, value, color, is_callhome in bars:
            if value is None:
                out.append(
                    f'<text x="{x + bar_w / 2:.1f}" y="{base_y - 6}" text-anchor="middle" '
                    f'fill="#999">n/a</text>'
                )
                continue
            if is_callhome:
                color = CALLHOME_MISSED if g.get("met") is False else CALLHOME_MET
            y = y_of(value)
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                f'height="{base_y - y:.1f}" fill="{color}"/>'
            )
            clipped = "+" if value > top else ""
            # Inside the bar's top when it is tall enough, so the target line never hides it.
            inside = base_y - y > 24
            out.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{y + 16 if inside else y - 4:.1f}" '
                f'text-anchor="middle" fill="{"#fff" if inside else "#000"}" '
                f'font-weight="bold">{value:.2f}{clipped}</text>'
            )
        ty = y_of(g["target"])
        out.append(
            f'<line x1="{cx - bar_w - 14:.1f}" y1="{ty:.1f}" x2="{cx + bar_w + 14:.1f}" '
            f'y2="{ty:.1f}" stroke="{TARGET}" stroke-width="2" stroke-dasharray="5,3"/>'
        )
        sign = "≤" if g["better"] == "lower" else "≥"
        lines = list(g["label"]) + [f"target {sign} {g['target']:g}×", f"{g['better']} is better"]
        for k, line in enumerate(lines):
            out.append(
                f'<text x="{cx:.1f}" y="{base_y + 18 + 15 * k}" text-anchor="middle" '
                f'fill="{"#555" if k >= len(lines) - 2 else "#000"}">{escape(line)}</text>'
            )
    out.append(
        f'<line x1="{LEFT}" y1="{base_y}" x2="{WIDTH - RIGHT}" y2="{base_y}" stroke="#333"/>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    demo = [
        {"label": ["RSS per client", "long poll"], "ratio": 0.3, "target": 0.5,
         "better": "lower", "met": True},
        {"label": ["publishes/s"], "ratio": 0.8, "target": 1.0, "better": "higher",
         "met": False},
        {"label": ["fan-out p99"], "ratio": None, "target": 1.0, "better": "lower",
         "met": None},
    ]
    print(render(demo, "Demo", "made-up numbers"), end="")
