"""The HTTP edge's one error mapping: ``CNFError`` -> RFC 9457 ``application/problem+json``.

Every 4xx/5xx the API returns goes through here, including FastAPI's own request
validation (422 naming the field), unknown routes (404) and wrong methods (405),
so clients (the OSC plugin's ``raise_from_response``) parse one shape:
``{"type","title","status","detail","code","field"?, ...details}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnf.errors import CNFError

PROBLEM = "application/problem+json"
TYPE_BASE = "https://docs.openstack-cnf.org/errors/"


def problem_response(status: int, code: str, title: str, detail: str, headers: dict[str, str] | None = None,
                     **extra: Any) -> JSONResponse:
    body = {"type": TYPE_BASE + code, "title": title, "status": status, "detail": detail, "code": code, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def error_response(err: CNFError) -> JSONResponse:
    headers = {}
    if err.retryable and err.http_status in (429, 503):
        headers["Retry-After"] = str(int(err.details.get("retry_after_s", 1) or 1))
    details = {k: v for k, v in err.details.items() if k != "retry_after_s"}
    return problem_response(err.http_status, err.code, err.title, err.message, headers=headers or None,
                            retryable=err.retryable, **details)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(CNFError)
    async def _cnf(_: Request, exc: CNFError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field(e.get("loc", ())), "message": str(e.get("msg", "")).removeprefix("Value error, ")}
                  for e in exc.errors()]
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        return problem_response(422, "invalid_input", "Invalid input", f"{first['field']}: {first['message']}",
                                field=first["field"], errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
        code = codes.get(exc.status_code, "http_error")
        return problem_response(exc.status_code, code, str(exc.detail), str(exc.detail),
                                headers=getattr(exc, "headers", None))
