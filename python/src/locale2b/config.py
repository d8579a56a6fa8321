"""Connection settings, built once from arguments and the environment.

This is the only module that reads the environment. Precedence: an explicit
argument wins over the environment variable, which wins over the default.

| setting         | argument         | environment variable       | default     |
|-----------------|------------------|----------------------------|-------------|
| base URL        | ``base_url``     | ``LOCALE2B_BASE_URL``      | (required)  |
| API key         | ``api_key``      | ``LOCALE2B_API_KEY``       | none        |
| API key header  | ``api_key_header`` | ``LOCALE2B_API_KEY_HEADER`` | ``X-API-Key`` |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from .errors import Locale2bConfigError

ENV_BASE_URL = "LOCALE2B_BASE_URL"
ENV_API_KEY = "LOCALE2B_API_KEY"
ENV_API_KEY_HEADER = "LOCALE2B_API_KEY_HEADER"
DEFAULT_API_KEY_HEADER = "X-API-Key"

#: Client timeouts, the same as CompyMac's client: connect 10 s, read 60 s,
#: write 10 s (pool 10 s).
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=10.0, pool=10.0)


@dataclass(frozen=True)
class ClientConfig:
    """Where the server is and how to authenticate.

    The API key is hidden from ``repr`` so that logging a config never leaks it.
    """

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    api_key_header: str = DEFAULT_API_KEY_HEADER
    timeout: httpx.Timeout = field(default_factory=lambda: DEFAULT_TIMEOUT)

    @classmethod
    def resolve(
        cls,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_header: str | None = None,
        *,
        timeout: httpx.Timeout | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ClientConfig:
        """Builds a config from arguments, then the environment, then defaults.

        Raises:
            Locale2bConfigError: no base URL was given and ``LOCALE2B_BASE_URL``
                is unset or empty, or the URL is not http(s).
        """
        env = os.environ if environ is None else environ
        url = base_url or env.get(ENV_BASE_URL) or ""
        if not url:
            raise Locale2bConfigError(
                f"no server URL: pass base_url or set {ENV_BASE_URL} "
                "(for example http://127.0.0.1:8080)"
            )
        if not (url.startswith("http://") or url.startswith("https://")):
            raise Locale2bConfigError(f"base URL must start with http:// or https://, got {url!r}")
        key = api_key if api_key is not None else (env.get(ENV_API_KEY) or None)
        header = api_key_header or env.get(ENV_API_KEY_HEADER) or DEFAULT_API_KEY_HEADER
        return cls(
            base_url=url.rstrip("/"),
            api_key=key,
            api_key_header=header,
            timeout=timeout or DEFAULT_TIMEOUT,
        )

    def headers(self) -> dict[str, str]:
        """Headers sent with every request: JSON content type and the API key."""
        headers = {"Content-Type": "application/json"}
        if self.api_key is not None:
            headers[self.api_key_header] = self.api_key
        return headers
