"""The `bedrock` kind: AWS Bedrock's Converse API, signed with SigV4.

IO only, in Converse's own format: ``POST /model/{modelId}/converse`` and
``/converse-stream``, whose answer is AWS event-stream framing (`edge.eventstream`). The
model id goes into the path percent-encoded as the AWS SDKs do it (an inference-profile
ARN holds ``:`` and ``/``), and the request is signed with SigV4 over that encoded path
(service ``bedrock``, the provider's ``region``) by `edge.sigv4`, which computes what
botocore's `SigV4Auth` computes (tests hold the two to the same signature) at a fraction
of its cost.

Credentials come from the standard AWS chain (environment, shared config and credentials
files with ``AWS_PROFILE``, container and instance roles) through botocore, resolved once
on first use and refreshed as botocore refreshes them. Resolving or refreshing may read
files or call a metadata endpoint, so it runs in a worker thread, never on the Trio
loop; a request while the credentials are fresh signs with no thread hop.

Errors are mapped by ``x-amzn-ErrorType``, not by the HTTP status (AWS answers 429 for a
model that is not ready, 408 for a model timeout): see `_ERROR_STATUSES`. An exception
frame in the stream (``throttlingException``...) raises, through the codec's
`error_in`, and ends the client's stream with an error event.

botocore (for the credential chain) is the ``edge[bedrock]`` extra; config validation
refuses a bedrock provider without it, so it is imported only when one resolves credentials.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import trio

from ..codecs import bedrock
from ..config import ProviderConfig
from ..errors import UpstreamConnectError, UpstreamError, UpstreamStatus
from ..eventstream import EventStreamDecoder
from ..sigv4 import Signer, host_of
from ..sse import SSEError
from .base import ChunkStream, Provider, retry_after_seconds
from .endless import EndsAtEOF

__all__ = ["BedrockProvider"]

SERVICE = "bedrock"  # SigV4 signing name (the host is bedrock-runtime)
EVENT_STREAM = "application/vnd.amazon.eventstream"

# x-amzn-ErrorType -> the status edge reports (SPEC §9); other types keep AWS's status.
_ERROR_STATUSES = {
    "ThrottlingException": 429,
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "ModelNotReadyException": 503,
    "ServiceUnavailableException": 503,
    "ModelTimeoutException": 504,
    "ResourceNotFoundException": 404,
    "InternalServerException": 500,
    "ModelErrorException": 502,
}
_NO_CREDENTIALS_RETRY_S = 10.0  # how long "no credentials" is believed before looking again
_MAX_URLS = 1024  # models named by clients (`provider/model`) must not grow the memo


class BedrockProvider(Provider):
    """AWS Bedrock Converse; see the module docstring."""

    kind = "bedrock"
    codec = bedrock
    key_header = None  # no key: `sign` signs each request with SigV4

    def __init__(
        self,
        config: ProviderConfig,
        transport: httpx.AsyncBaseTransport,
        retry_on: frozenset[int],
    ) -> None:
        super().__init__(config, transport, retry_on)
        if config.region is None:
            raise ValueError(f"provider {config.name}: a bedrock provider needs a region")
        self._signer = Signer(SERVICE, config.region)
        self._root = config.base_url.rstrip("/") + "/model/"
        self._host = host_of(self._root)
        self._credentials = _Credentials(self.name)
        self._frozen: Any = None  # the credentials `sign` uses, renewed before each request
        self._urls: dict[tuple[str, str], httpx.URL] = {}

    async def complete(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> dict[str, Any]:
        """The Converse answer, untranslated."""
        self._check_endpoint(endpoint)
        request = await self._request(model, "converse", orjson.dumps(body), "application/json")
        return await self.answer_json(request)

    async def open_stream(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> ChunkStream:
        """The items are ``(event type, payload)`` pairs; an exception frame raises."""
        self._check_endpoint(endpoint)
        request = await self._request(model, "converse-stream", orjson.dumps(body),
                                      EVENT_STREAM)
        response = await self.send(request)
        if not response.headers.get("content-type", "").startswith(EVENT_STREAM):
            await response.aclose()
            raise UpstreamError(f"provider {self.name} did not answer with an event stream")
        return EndsAtEOF(response, self, _Events(), parser=_Frames())

    def _check_endpoint(self, endpoint: str) -> None:
        if endpoint != "chat":
            raise UpstreamStatus(
                400, f"provider {self.name} (bedrock) does not serve {endpoint}", retryable=False)

    async def _request(self, model: str, action: str, content: bytes,
                       accept: str) -> httpx.Request:
        """The unsigned request, with credentials fresh for `sign` to sign it with."""
        url = self._urls.get((model, action))
        if url is None:
            model_id = quote(model, safe="")
            if model_id in (".", ".."):  # a dot segment would leave /model/ altogether
                model_id = model_id.replace(".", "%2E")
            url = httpx.URL(f"{self._root}{model_id}/{action}")
            if len(self._urls) < _MAX_URLS:
                self._urls[(model, action)] = url
        self._frozen = await self._credentials.current()
        return httpx.Request("POST", url, content=content,
                             headers=[("content-type", "application/json"), ("accept", accept)])

    def sign(self, request: httpx.Request) -> None:
        """SigV4 over the request as it will be sent (its encoded path, its body), at the
        moment `send` sends it: the signature carries the time, so one per attempt."""
        headers = request.headers
        signed = [("content-type", headers["content-type"]), ("accept", headers["accept"])]
        path = request.url.raw_path.decode("ascii")  # percent-encoded, as sent
        for name, value in self._signer.sign(self._frozen, "POST", path, self._host, signed,
                                             request.content, datetime.now(UTC)):
            headers[name] = value

    def status_error(self, response: httpx.Response, body: bytes) -> UpstreamStatus:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        data = data if isinstance(data, dict) else {}
        error_type = response.headers.get("x-amzn-errortype", "").split(":", 1)[0]
        if not error_type and isinstance(data.get("__type"), str):
            error_type = data["__type"].rpartition("#")[2]
        message = data.get("message") or data.get("Message")
        if not isinstance(message, str) or not message:
            message = f"provider {self.name} answered {response.status_code}"
        status = _ERROR_STATUSES.get(error_type, response.status_code)
        error = UpstreamStatus(
            status, message, retryable=status in self.retry_on, code=error_type or None,
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
            provider=self.name)
        self.scrub(error)
        return error


class _Credentials:
    """The AWS credential chain's answer, resolved once and refreshed by botocore.

    botocore's refreshable credentials refresh themselves inside
    `get_frozen_credentials` when they are close to expiry, a blocking call; so that
    call goes to a thread whenever `refresh_needed` says it would refresh, and otherwise
    runs inline (a few attribute reads). One task resolves or refreshes at a time.
    """

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._chain: Any = None
        self._missing_until = 0.0
        self._lock = trio.Lock()

    async def current(self) -> Any:
        """Frozen credentials to sign one request with.

        Raises:
            UpstreamConnectError: the chain has no credentials, or failed to get them
                (retryable: another candidate may serve the request).
        """
        chain = self._chain
        if chain is not None and not _needs_refresh(chain):
            return chain.get_frozen_credentials()
        async with self._lock:
            if self._chain is None:
                if time.monotonic() < self._missing_until:
                    raise self._missing()
                self._chain = await self._in_thread(_resolve)
                if self._chain is None:
                    self._missing_until = time.monotonic() + _NO_CREDENTIALS_RETRY_S
                    raise self._missing()
            chain = self._chain
            if _needs_refresh(chain):
                return await self._in_thread(chain.get_frozen_credentials)
            return chain.get_frozen_credentials()

    async def _in_thread(self, work: Any) -> Any:
        try:
            return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
        except Exception as exc:  # botocore's own errors: profile not found, STS refused...
            raise UpstreamConnectError(
                f"provider {self._provider} could not get AWS credentials "
                f"({type(exc).__name__})") from None

    def _missing(self) -> UpstreamConnectError:
        return UpstreamConnectError(
            f"provider {self._provider} found no AWS credentials (environment, shared "
            "config and credentials files, AWS_PROFILE, container or instance role)")


def _resolve() -> Any:
    """The chain's credentials, or None (runs in a worker thread)."""
    import botocore.session

    return botocore.session.Session().get_credentials()


def _needs_refresh(chain: Any) -> bool:
    refresh_needed = getattr(chain, "refresh_needed", None)
    return bool(refresh_needed()) if refresh_needed is not None else False


_CORRUPT = "\x00corrupt"  # the name of the item that stands for a bad frame


class _Frames:
    """Event-stream frames as ``(event type, payload)`` pairs, the way `ChunkStream` reads
    SSE events. A bad frame becomes a `_CORRUPT` item after the good ones of the same
    read, so the text before it still reaches the client before the error."""

    def __init__(self) -> None:
        self._decoder = EventStreamDecoder()

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        try:
            for message in self._decoder.messages(data):
                headers = message.headers
                kind = headers.get(":message-type", "event")
                if kind == "event":
                    out.append((headers.get(":event-type", ""), message.payload))
                elif kind == "exception":
                    name = headers.get(":exception-type", "")
                    out.append((name if name.endswith("Exception") else name + "Exception",
                                message.payload))
                else:  # "error": the service's own failure, told in headers
                    text = headers.get(":error-message") or headers.get(":error-code") or ""
                    out.append((_CORRUPT, f"provider stream error: {text}".encode()))
                    break
        except UpstreamError as error:
            out.append((_CORRUPT, error.message.encode()))
        return out

    def close(self) -> None:
        self._decoder.close()


class _Events:
    """Frames to items; the answer is whole once the ``metadata`` event (the last) came."""

    def __init__(self) -> None:
        self.whole = False

    def __call__(self, name: str, data: bytes) -> tuple[list[tuple[str, Any]], bool]:
        if name == _CORRUPT:
            raise UpstreamError(data.decode("utf-8", "replace"))
        payload = orjson.loads(data) if data.strip() else {}
        if not isinstance(payload, dict):
            raise SSEError("event payload is not a JSON object")
        item = (name, payload)
        error = bedrock.error_in(item)
        if error is not None:
            raise error  # ChunkStream scrubs it and raises it after the items before it
        if name == "metadata":
            self.whole = True
        return [item], False
