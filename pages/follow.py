"""Following one image from page to page (explorer.ImageRef): links that open it on How DLSR works or Score images,
the session's store of uploaded files those links and the returning pages find, and a page's reading of the image
its link brought. This is not a page: app.py routes only to the pages it lists.
"""

from __future__ import annotations

import streamlit as st

from dlsr_core import explorer

WALK_PAGE = "pages/how_dlsr_works.py"
SCORE_PAGE = "pages/score_images.py"
STORE_KEY = "upload_store"
_APPLIED_PREFIX = "_followed_"


def upload_store() -> explorer.UploadStore:
    """The session's uploaded files by content digest: they outlive the upload widgets, which Streamlit empties when
    the user opens another page."""
    if STORE_KEY not in st.session_state:
        st.session_state[STORE_KEY] = explorer.UploadStore()
    return st.session_state[STORE_KEY]


def links(ref: explorer.ImageRef, container=None, walk: bool = True, score: bool = True) -> None:
    """One-click links opening `ref` on How DLSR works (traced step by step) and/or Score images."""
    container = container or st
    query = {explorer.IMAGE_QUERY_KEY: ref.token}
    if walk:
        container.page_link(WALK_PAGE, label="Trace in How DLSR works", icon=":material/school:", query_params=query)
    if score:
        container.page_link(
            SCORE_PAGE, label="Open in Score images", icon=":material/image_search:", query_params=query
        )


def incoming(page: str) -> explorer.ImageRef | None:
    """The image a link brought to `page` (the `image` query parameter), once: None when there is none or it was
    read before in this session (the page's own widgets then decide); a malformed link is a warning."""
    token = st.query_params.get(explorer.IMAGE_QUERY_KEY)
    if not token or token == st.session_state.get(_APPLIED_PREFIX + page):
        return None
    st.session_state[_APPLIED_PREFIX + page] = token
    try:
        return explorer.ImageRef.from_token(token)
    except ValueError as error:
        st.warning(f"{error}; showing this page's own choice instead.")
        return None


def shown(page: str, ref: explorer.ImageRef) -> None:
    """Put the image `page` shows now in the address bar (a set image's link can be copied and shared) without
    reading it back as a new arrival."""
    st.session_state[_APPLIED_PREFIX + page] = ref.token
    if st.query_params.get(explorer.IMAGE_QUERY_KEY) != ref.token:
        st.query_params[explorer.IMAGE_QUERY_KEY] = ref.token


def missing_upload_message(ref: explorer.ImageRef) -> str:
    return (
        f"The linked upload ({ref.digest[:8]}…) is not in this browser session any more (uploads are kept only while "
        "the session lasts); upload the file again."
    )
