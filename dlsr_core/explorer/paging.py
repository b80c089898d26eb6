"""Paging through a list of images (failure cases, a map selection, two models' disagreements): every item is on
exactly one page, so nothing is out of reach however long the list."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageWindow:
    """Page `page` (1-based) of `pages`: items [start, stop) of `count`."""

    page: int
    pages: int
    start: int
    stop: int
    count: int

    @property
    def caption(self) -> str:
        if self.count == 0:
            return "nothing to show"
        return f"page {self.page} of {self.pages}: {self.start + 1}–{self.stop} of {self.count:,}"


def page_window(count: int, per_page: int, page: int) -> PageWindow:
    """The window of `page` over `count` items, `per_page` a page; a page out of range is clamped to the last one
    (a filter that shrinks the list keeps the user on a page that exists)."""
    if per_page < 1:
        raise ValueError(f"per_page must be >= 1, got {per_page}")
    pages = max(1, -(-count // per_page))
    page = min(max(int(page), 1), pages)
    start = (page - 1) * per_page
    return PageWindow(page, pages, start, min(start + per_page, count), count)
