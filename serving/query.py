"""The one check of a request's query string that every route of the service makes."""

from __future__ import annotations

from starlette.requests import Request

from runners.errors import BadInput


def check_query(request: Request, names: frozenset[str]) -> None:
    """Refuse a query parameter the endpoint does not take, or one given twice (400)."""
    query = request.query_params
    unknown = sorted(query.keys() - names)
    if unknown:
        given = ", ".join(repr(name[:64]) for name in unknown[:5])
        raise BadInput(
            f"unknown query parameters {given}; this endpoint takes "
            f"{', '.join(sorted(names)) or 'none'}"
        )
    repeated = sorted(name for name in names if len(query.getlist(name)) > 1)
    if repeated:
        raise BadInput(f"query parameters given more than once: {', '.join(repeated)}")
