"""HTML the pages render as it is (no streamlit here): the layer profile of one image as small percentile tracks."""

from __future__ import annotations

import html

from dlsr_core.explorer.explanation import LayerProfile
from dlsr_core.explorer.scores import percent_text

PROFILE_COLOURS = {"worse": "#b83b3b", "better": "#3b6fb6", "normal": "#9a9a9a"}


def profile_html(profile: LayerProfile) -> str:
    """The layer profile as small HTML rows: per stage, the ID 5-95 % band (grey) on a 0-100 percentile track and
    this image's place on it; a stage is coloured only outside the band (red: less ID-like, blue: more)."""
    rows = []
    for name, percent, z_score, status in zip(
        profile.names, profile.worse_than, profile.z_scores, profile.status, strict=True
    ):
        colour = PROFILE_COLOURS[status]
        position = min(max(float(percent), 0.0), 100.0)
        rows.append(
            f'<div style="display:flex;align-items:center;gap:6px;font-size:12px;line-height:17px" '
            f'title="{html.escape(name.label)}: {profile.comparison} {percent_text(percent)} % of ID images, '
            f'z = {z_score:+.1f}">'
            # The label may shrink (full name in the tooltip); the number never wraps: three cards side by side
            # on a 1024-px screen leave each row about 170 px.
            f'<span style="flex:0 1 128px;min-width:0;white-space:nowrap;overflow:hidden;text-overflow:ellipsis">'
            f"{name.number} · {html.escape(name.role)}</span>"
            f'<span style="position:relative;flex:1 1 60px;height:12px;background:#f1f1f1;min-width:36px">'
            f'<span style="position:absolute;left:5%;width:90%;top:3px;height:6px;background:#d9d9d9"></span>'
            f'<span style="position:absolute;left:calc({position:.1f}% - 4px);top:1px;width:8px;height:10px;'
            f'border-radius:2px;background:{colour}"></span></span>'
            f'<span style="flex:0 0 46px;white-space:nowrap;text-align:right;'
            f'color:{colour if status != "normal" else "#333"}">'
            f"{percent_text(percent)} %</span></div>"
        )
    title = (
        f'<div style="font-size:12px;color:#555">Layer profile ({html.escape(profile.quantity)}): stage · role, '
        f"{profile.comparison} … % of {profile.reference_size:,} ID images; grey band = ID 5–95 %</div>"
    )
    sentence = f'<div style="font-size:12px;margin-top:4px">{html.escape(profile.sentence)}</div>'
    return title + "".join(rows) + sentence
