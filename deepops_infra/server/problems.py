"""RFC 9457 problem details: every refused or failed request answers application/problem+json."""

from typing import Any

from starlette.responses import JSONResponse

from deepops_infra.errors import CapacityError, ConflictError, DeepopsError, NotFoundError, PolicyError, UserError

MEDIA_TYPE = "application/problem+json"
TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    411: "Length required",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal server error",
    502: "Operation failed",
}


class Problem(Exception):
    """Raised by handlers to answer a problem; nothing was changed."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers, self.extra = status, detail, headers or {}, extra


def problem_response(
    status: int, detail: str, instance: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {
        "type": f"https://deepops.invalid/problems/{status}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body |= extra
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def status_for(exc: DeepopsError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, PolicyError):
        return 403
    if isinstance(exc, CapacityError | ConflictError):
        return 409
    if isinstance(exc, UserError):
        return 422
    return 502
