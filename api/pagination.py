from rest_framework.pagination import CursorPagination


class IdCursorPagination(CursorPagination):
    """Stable pages over large tables: the cursor encodes the last id, so inserts never shift a page."""

    ordering = "-id"
    page_size_query_param = "page_size"
    max_page_size = 1000
