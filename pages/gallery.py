"""Grids of image cards with paging, shared by Failure cases, the feature map's selection, Compare models and Score
images: each card shows the image, lines of text (line breaks kept), optionally its layer profile, and links that open
the image on another page. This is not a page: app.py routes only to the pages it lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st
from PIL import Image

from dlsr_core import explorer
from pages import follow

THUMBNAIL = 84  # px: small sets (28 px) are enlarged without smoothing, large images shrunk
_MARKDOWN_SPECIALS = "\\`*_{}[]<>()#+-.!|~$"


def md(text: object) -> str:
    """`text` as literal Markdown (set and class names may hold *, _, $ … which Streamlit would render)."""
    return "".join("\\" + c if c in _MARKDOWN_SPECIALS else c for c in str(text))


@dataclass(frozen=True)
class Card:
    """One image card: `lines` are Markdown (escape names with md), one per line; `ref` adds the follow links."""

    image: Image.Image | None
    lines: tuple[str, ...]
    ref: explorer.ImageRef | None = None
    profile: explorer.LayerProfile | None = None
    note: str = ""
    walk_link: bool = True
    score_link: bool = True


def pager(count: int, per_page: int, key: str, container=None) -> explorer.PageWindow:
    """A page picker over `count` items (shown only when there is more than one page) and the chosen page's window;
    a page that no longer exists (the list shrank) becomes the last one."""
    container = container or st
    pages = explorer.page_window(count, per_page, 1).pages
    if pages > 1:
        if st.session_state.get(key, 1) > pages:
            st.session_state[key] = pages
        page = container.pagination(pages, key=key)
    else:
        page = 1
    window = explorer.page_window(count, per_page, int(page))
    container.caption(f"Showing {window.caption}.")
    return window


def text_columns(frame, names: tuple[str, ...]) -> dict:
    """column_config of text columns wide enough for their longest value and header: st.dataframe sizes a column by
    its first rows and cuts longer text off."""
    config = {}
    for name in names:
        if name in frame:
            longest = max([len(str(name)), *(len(str(value)) for value in frame[name] if value is not None)])
            config[name] = st.column_config.TextColumn(width=int(7.5 * longest + 28))
    return config


@st.cache_data(max_entries=256, show_spinner=False)
def set_images(spec: str, indices: tuple[int, ...]) -> list[Image.Image | None]:
    """The images at dataset positions `indices` of `spec`, no larger than twice a thumbnail (cached small)."""
    images = []
    for image in explorer.dataset_images(spec, indices):
        if image is not None and max(image.size) > 2 * THUMBNAIL:
            image = image.copy()
            image.thumbnail((2 * THUMBNAIL, 2 * THUMBNAIL))
        images.append(image)
    return images


def thumbnail(image: Image.Image | None) -> Image.Image | None:
    if image is None:
        return None
    if max(image.size) < THUMBNAIL:
        return image.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.NEAREST)
    return image


def show_cards(cards: list[Card], per_row: int = 3) -> None:
    """The cards in rows of `per_row` (three fit a 1024-px screen beside the sidebar)."""
    for start in range(0, len(cards), per_row):
        columns = st.columns(per_row)
        for column, card in zip(columns, cards[start : start + per_row], strict=False):
            with column.container(border=True):
                picture, text = st.columns([1, 2])
                if card.image is not None:
                    picture.image(thumbnail(card.image), width=THUMBNAIL)
                else:
                    picture.caption("(unreadable)")
                text.markdown("  \n".join(card.lines))
                if card.profile is not None:
                    st.html(explorer.profile_html(card.profile))
                if card.note:
                    st.caption(card.note)
                if card.ref is not None:
                    follow.links(card.ref, walk=card.walk_link, score=card.score_link)
