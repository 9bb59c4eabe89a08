"""Talking to a running OpenAI-compatible server (`orchard serve`, mlx_lm.server, llama-server, …):
the one place that turns a user's URL into the /v1 base and asks what it serves, with one-line errors
for a wrong URL, an unreachable server, a refused key or an answer that is not OpenAI's."""

from __future__ import annotations

from mlxmodels.errors import OrchardError


def api_base(url: str, flag: str) -> str:
    """The /v1 base of `url` (given with or without /v1); `flag` names the option in errors."""
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise OrchardError(f"{flag} {url}: give an http:// or https:// URL, e.g. http://127.0.0.1:8080")
    return base if base.endswith("/v1") else base + "/v1"


def auth_headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def error_message(response) -> str:
    """The message of an OpenAI-style error body, else the start of the body."""
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def served_models(base: str, api_key: str | None, timeout: float) -> list[dict]:
    """GET {base}/models: the served models' entries (at least one)."""
    import httpx

    try:
        response = httpx.get(f"{base}/models", headers=auth_headers(api_key), timeout=timeout)
    except httpx.HTTPError as e:
        raise OrchardError(f"cannot reach the server at {base}: {e}") from None
    if response.status_code != 200:
        raise OrchardError(f"the server at {base} answered {response.status_code}: {error_message(response)}")
    try:
        models = response.json().get("data") or []
    except (ValueError, AttributeError):
        models = None
    if models is None or not all(isinstance(m, dict) and "id" in m for m in models):
        raise OrchardError(f"{base}/models did not answer like an OpenAI-compatible server")
    if not models:
        raise OrchardError(f"the server at {base} serves no model")
    return models
