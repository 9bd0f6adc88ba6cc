"""In-test fakes of Gemini, Azure OpenAI and AWS Bedrock that speak their real wire formats.

Each serves real HTTP/1.1 on a free loopback port and answers deterministically from the
request, as the real service would shape it: Gemini's ``generateContent`` JSON, its SSE
stream (no end marker) and ``batchEmbedContents``; Azure's deployment URLs with
``api-version``, its first stream chunk that carries only ``prompt_filter_results``;
Bedrock's Converse JSON and ``converse-stream`` as binary AWS event-stream frames. Each
checks what the real service checks: the key header, the api-version, the deployment,
Gemini 3's thought signatures on returned function calls, Bedrock's tool-result ids and,
above all, the SigV4 signature, recomputed with botocore from the raw request.

The fakes themselves are checked against the official SDKs (google-genai, boto3, openai's
AzureOpenAI) in the tests of each kind (tests/test_e2e_gemini.py, test_e2e_azure.py,
test_e2e_bedrock.py).

Faults are asked for in the last user text, so concurrent tests never share state:
``!status 429`` (Gemini: a RESOURCE_EXHAUSTED error with a RetryInfo of 7s), ``!error
ThrottlingException`` (Bedrock: that x-amzn-ErrorType), ``!cut`` (the stream stops before
its end), ``!exception throttlingException`` (an exception frame mid-stream),
``!badcrc`` (a frame whose CRC is wrong), ``!errorchunk`` (Gemini: an error chunk mid-stream),
``!linger`` (Gemini: the body stays open for 30 s after the last chunk).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from _fake_upstream import FakeUpstream, Reply

__all__ = ["AzureFake", "BedrockFake", "GeminiFake", "event_frame"]

REPLY_WORDS = re.compile(r"\S+")


@dataclass
class Seen:
    """One request as the fake received it: the raw path (query included), headers, body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(json.dumps(data).encode(), status, headers=headers or {})


def _words(text: str) -> int:
    return len(REPLY_WORDS.findall(text))


def _directive(text: str) -> tuple[str, str]:
    """("status", "429") for "!status 429 ...", ("", "") for ordinary text."""
    if not text.startswith("!"):
        return "", ""
    name, _, rest = text[1:].partition(" ")
    return name, rest.split(" ", 1)[0]


class _Server(FakeUpstream):
    """A `FakeUpstream` whose every request goes to `handle(Seen) -> Reply`, kept in `seen`."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        super().__init__(lambda path, body: Reply(b"", 500))

    def handle(self, request: Seen) -> Reply:
        raise NotImplementedError

    def answer(self, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        seen = Seen("POST", path, headers, raw)
        with self._lock:
            self.seen.append(seen)
        try:
            return self.handle(seen)
        except Exception as exc:  # a fake's bug must show as a failure, not a hang
            return _json({"error": {"message": f"fake failed: {exc!r}"}}, 500)

    def last(self, predicate: Callable[[Seen], bool] = lambda s: True) -> Seen:
        with self._lock:
            return next(s for s in reversed(self.seen) if predicate(s))


def _call_key(name: str, args: Any) -> tuple[str, str]:
    return name, json.dumps(args or {}, sort_keys=True)


def _embedding(text: str, size: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((digest[i % len(digest)] - 128) / 128, 6) for i in range(size)]


# --------------------------------------------------------------------------- Gemini

_GEMINI_PATH = re.compile(r"/v1beta/models/([^/:]+):(generateContent|streamGenerateContent|"
                          r"batchEmbedContents)")


class GeminiFake(_Server):
    """The Gemini API: generateContent, streamGenerateContent?alt=sse, batchEmbedContents."""

    def __init__(self, *keys: str, exhausted: Iterable[str] = ()) -> None:
        """`keys` are the valid API keys; those in `exhausted` get a 429 with RetryInfo,
        as a key over its quota does. `used` counts the requests each valid key made."""
        self.keys = set(keys)
        self.exhausted = set(exhausted)
        self.used: collections.Counter[str] = collections.Counter()
        # (function name, arguments as canonical JSON) -> the signature given with that call
        self.signatures: dict[tuple[str, str], str] = {}
        super().__init__()

    def handle(self, request: Seen) -> Reply:
        key = request.headers.get("x-goog-api-key", "")
        if key not in self.keys:
            return _json({"error": {
                "code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}, 400)
        with self._lock:
            self.used[key] += 1
        if key in self.exhausted:
            return self._error(429)
        url = urlsplit(request.path)
        found = _GEMINI_PATH.fullmatch(url.path)
        if found is None:
            return _json({"error": {"code": 404, "message": f"no method {url.path}",
                                    "status": "NOT_FOUND"}}, 404)
        model, method = found.groups()
        body = request.json()
        if method == "batchEmbedContents":
            return self._embed(model, body)
        if method == "streamGenerateContent" and parse_qs(url.query).get("alt") != ["sse"]:
            return _json({"error": {"code": 400, "message": "this fake streams SSE only",
                                    "status": "INVALID_ARGUMENT"}}, 400)
        problem = self._check(body)
        if problem is not None:
            return problem
        text = self._last_user_text(body)
        name, value = _directive(text)
        if name == "status":
            return self._error(int(value))
        parts, finish = self._reply(model, body, text)
        usage = {"promptTokenCount": self._prompt_tokens(body),
                 "candidatesTokenCount": sum(_words(p.get("text", "")) or 1 for p in parts),
                 "totalTokenCount": 0}
        usage["totalTokenCount"] = usage["promptTokenCount"] + usage["candidatesTokenCount"]
        if method == "generateContent":
            return _json({"candidates": [{"content": {"role": "model", "parts": parts},
                                          "finishReason": finish, "index": 0}],
                          "usageMetadata": usage, "modelVersion": model,
                          "responseId": "resp-gem-1"})
        return Reply(self._stream(model, parts, finish, usage, name),
                      content_type="text/event-stream")

    def _error(self, status: int) -> Reply:
        names = {429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE", 400: "INVALID_ARGUMENT",
                 403: "PERMISSION_DENIED", 500: "INTERNAL"}
        error: dict[str, Any] = {"code": status, "message": f"fake gemini error {status}",
                                 "status": names.get(status, "UNKNOWN")}
        if status == 429:
            error["details"] = [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                 "violations": [{"quotaMetric": "generate_content_free_tier_requests"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
        return _json({"error": error}, status)

    def _check(self, body: dict[str, Any]) -> Reply | None:
        """What Gemini refuses: bad roles, a call turn not answered by as many responses,
        and (Gemini 3) a returned call without its signature."""
        contents = body.get("contents", [])
        for turn, answer in zip(contents, contents[1:], strict=False):
            calls = sum("functionCall" in p for p in turn.get("parts", []))
            responses = sum("functionResponse" in p for p in answer.get("parts", []))
            if calls and responses and calls != responses:
                return self._invalid("Please ensure that the number of function response parts "
                                     "is equal to the number of function call parts of the "
                                     "function call turn.")
        for content in contents:
            if content.get("role") not in ("user", "model"):
                return self._invalid(f"role {content.get('role')!r} is not user or model")
            for part in content.get("parts", []):
                call = part.get("functionCall")
                if call is not None and content["role"] == "model":
                    given = self.signatures.get(_call_key(call["name"], call.get("args")))
                    if given is not None and part.get("thoughtSignature") != given:
                        return self._invalid("Function call is missing a thought_signature "
                                             "in functionCall parts.")
        return None

    @staticmethod
    def _invalid(message: str) -> Reply:
        return _json({"error": {"code": 400, "message": message,
                                "status": "INVALID_ARGUMENT"}}, 400)

    @staticmethod
    def _last_user_text(body: dict[str, Any]) -> str:
        for content in reversed(body.get("contents", [])):
            if content.get("role") == "user":
                texts = [p["text"] for p in content.get("parts", []) if "text" in p]
                return " ".join(texts)
        return ""

    @staticmethod
    def _prompt_tokens(body: dict[str, Any]) -> int:
        system = body.get("systemInstruction", {}).get("parts", [])
        parts = [*system, *(p for c in body.get("contents", []) for p in c.get("parts", []))]
        return sum(_words(p.get("text", "")) or 1 for p in parts)

    def _reply(self, model: str, body: dict[str, Any],
               text: str) -> tuple[list[dict[str, Any]], str]:
        last = body["contents"][-1]["parts"]
        results = [p["functionResponse"] for p in last if "functionResponse" in p]
        tools = [d for t in body.get("tools", []) for d in t.get("functionDeclarations", [])]
        if results:
            said = ", ".join(f"{r['name']}={json.dumps(r['response'], sort_keys=True)}"
                             for r in results)
            return [{"text": f"Tool said: {said}"}], "STOP"
        mode = body.get("toolConfig", {}).get("functionCallingConfig", {}).get("mode", "AUTO")
        if tools and mode != "NONE":
            # parallel calls ("!parallel Rome,Oslo"): as Gemini 3, only the first is signed
            name = tools[0]["name"]
            directive, cities = _directive(text)
            calls: list[dict[str, Any]] = [
                {"functionCall": {"name": name, "args": {"city": city}}}
                for city in (cities.split(",") if directive == "parallel" else [text])]
            signature = base64.b64encode(f"sig:{name}:{text}".encode()).decode()
            self.signatures[_call_key(name, calls[0]["functionCall"]["args"])] = signature
            calls[0]["thoughtSignature"] = signature
            return calls, "STOP"
        images = [p["inlineData"] for p in last if "inlineData" in p]
        config = body.get("generationConfig", {})
        if config.get("responseMimeType") == "application/json":
            reply = json.dumps({"reply": text, "images": len(images)})
        else:
            system = " ".join(p["text"] for p in body.get("systemInstruction", {})
                              .get("parts", []))
            reply = f"Gemini reply to: {text}"
            if images:
                sizes = ", ".join(f"{i['mimeType']} {len(base64.b64decode(i['data']))} bytes"
                                  for i in images)
                reply += f" [images: {sizes}]"
            if system:
                reply += f" [system: {system}]"
        words = reply.split(" ")
        limit = config.get("maxOutputTokens")
        if isinstance(limit, int) and limit < len(words):
            return [{"text": " ".join(words[:limit])}], "MAX_TOKENS"
        for stop in config.get("stopSequences", []):
            if stop in reply:
                return [{"text": reply.split(stop, 1)[0]}], "STOP"
        return [{"text": reply}], "STOP"

    @staticmethod
    def _stream(model: str, parts: list[dict[str, Any]], finish: str, usage: dict[str, int],
                directive: str) -> Iterator[bytes]:
        def event(data: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps(data).encode() + b"\r\n\r\n"

        head = {"modelVersion": model, "responseId": "resp-gem-stream"}
        pieces: list[dict[str, Any]] = []
        for part in parts:
            if "text" in part:
                words = part["text"].split(" ")
                pieces += [{"text": w if i == 0 else " " + w} for i, w in enumerate(words)]
            else:
                pieces.append(part)
        for i, piece in enumerate(pieces):
            if directive == "cut" and i == 2:
                return
            if directive == "errorchunk" and i == 1:
                yield event({"error": {"code": 503, "message": "The model is overloaded.",
                                       "status": "UNAVAILABLE"}})
                return
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": [piece]},
                                         "index": 0}
            chunk = {"candidates": [candidate], **head,
                     "usageMetadata": {"promptTokenCount": usage["promptTokenCount"],
                                       "totalTokenCount": usage["promptTokenCount"]}}
            if i == len(pieces) - 1:
                candidate["finishReason"] = finish
                chunk["usageMetadata"] = usage
            yield event(chunk)
        if directive == "linger":  # the answer is whole, but the body does not end yet
            time.sleep(30)

    def _embed(self, model: str, body: dict[str, Any]) -> Reply:
        embeddings = []
        for request in body["requests"]:
            if request.get("model") != f"models/{model}":
                return self._invalid(f"requests[].model must be models/{model}")
            text = " ".join(p["text"] for p in request["content"]["parts"])
            embeddings.append({"values": _embedding(text, request.get("outputDimensionality", 8))})
        return _json({"embeddings": embeddings})


# --------------------------------------------------------------------------- Azure

_AZURE_DATED = re.compile(r"/openai/deployments/([^/]+)/(chat/completions|embeddings)")
_AZURE_V1 = re.compile(r"/openai/v1/(chat/completions|embeddings)")
_FILTERS = {name: {"filtered": False, "severity": "safe"}
            for name in ("hate", "self_harm", "sexual", "violence")}


class AzureFake(_Server):
    """Azure OpenAI: deployment URLs with api-version, or the v1 API; the api-key header."""

    def __init__(self, key: str, deployments: Iterable[str]) -> None:
        self.key = key
        self.deployments = set(deployments)
        super().__init__()

    def handle(self, request: Seen) -> Reply:
        if request.headers.get("api-key") != self.key:
            return _json({"error": {"code": "401", "message": "Access denied due to invalid "
                                    "subscription key or wrong API endpoint."}}, 401)
        url = urlsplit(request.path)
        body = request.json()
        dated, v1 = _AZURE_DATED.fullmatch(url.path), _AZURE_V1.fullmatch(url.path)
        if dated is not None:
            if not parse_qs(url.query).get("api-version"):
                return _json({"error": {"code": "404", "message": "Resource not found"}}, 404)
            deployment, operation = unquote(dated.group(1)), dated.group(2)
        elif v1 is not None:
            deployment, operation = body.get("model", ""), v1.group(1)
        else:
            return _json({"error": {"code": "404", "message": "Resource not found"}}, 404)
        if deployment not in self.deployments:
            return _json({"error": {"code": "DeploymentNotFound", "message":
                                    f"The API deployment {deployment} does not exist."}}, 404)
        if operation == "embeddings":
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            return _json({"object": "list", "model": "text-embedding-3-small",
                          "data": [{"object": "embedding", "index": i,
                                    "embedding": _embedding(t, body.get("dimensions", 8))}
                                   for i, t in enumerate(inputs)],
                          "usage": {"prompt_tokens": 2 * len(inputs),
                                    "total_tokens": 2 * len(inputs)}})
        messages = body["messages"]
        last = messages[-1]
        text = last["content"] if isinstance(last.get("content"), str) else json.dumps(
            last.get("content"))
        if _directive(text)[0] == "status":
            status = int(_directive(text)[1])
            return _json({"error": {"code": str(status), "message": f"fake azure {status}"}},
                         status, headers={"retry-after": "3"} if status == 429 else None)
        message: dict[str, Any] = {"role": "assistant", "content": f"Azure reply to: {text}"}
        finish = "stop"
        if last["role"] == "tool":
            message["content"] = f"Tool said: {last['content']}"
        elif body.get("tools") and body.get("tool_choice") != "none":
            name = body["tools"][0]["function"]["name"]
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_azure_1", "type": "function",
                 "function": {"name": name, "arguments": json.dumps({"city": text})}}]}
            finish = "tool_calls"
        prompt = sum(_words(json.dumps(m.get("content"))) for m in messages)
        completion = _words(message.get("content") or "") or 1
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}
        head = {"id": "chatcmpl-azure-1", "created": 1700000000, "model": "gpt-4o-2024-08-06",
                "system_fingerprint": "fp_azure"}
        if not body.get("stream"):
            return _json({**head, "object": "chat.completion",
                          "prompt_filter_results": [{"prompt_index": 0,
                                                     "content_filter_results": _FILTERS}],
                          "choices": [{"index": 0, "message": message, "finish_reason": finish,
                                       "logprobs": None, "content_filter_results": _FILTERS}],
                          "usage": usage})
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        return Reply(self._stream(head, message, finish, usage, include_usage),
                      content_type="text/event-stream")

    @staticmethod
    def _stream(head: dict[str, Any], message: dict[str, Any], finish: str,
                usage: dict[str, int], include_usage: bool) -> Iterator[bytes]:
        def event(data: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        # Azure's first chunk: no choices, empty id/model, only the prompt's filter results.
        yield event({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                     "prompt_filter_results": [{"prompt_index": 0,
                                                "content_filter_results": _FILTERS}]})
        chunk = {**head, "object": "chat.completion.chunk"}

        def choice(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            out = {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": reason,
                                         "logprobs": None,
                                         "content_filter_results": {} if reason else _FILTERS}]}
            if include_usage:
                out["usage"] = None
            return out

        yield event(choice({"role": "assistant", "content": ""}))
        if message.get("tool_calls"):
            call = message["tool_calls"][0]
            yield event(choice({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                                "function": {"name": call["function"]["name"],
                                                             "arguments": ""}}]}))
            arguments = call["function"]["arguments"]
            for at in range(0, len(arguments), 5):
                yield event(choice({"tool_calls": [{"index": 0, "function": {
                    "arguments": arguments[at:at + 5]}}]}))
        else:
            for i, word in enumerate(message["content"].split(" ")):
                yield event(choice({"content": word if i == 0 else " " + word}))
        yield event(choice({}, finish))
        if include_usage:
            yield event({**chunk, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"


# --------------------------------------------------------------------------- Bedrock


def event_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude, string headers, payload, CRCs."""
    encoded = b"".join(bytes([len(name)]) + name.encode() + b"\x07"
                       + struct.pack(">H", len(value.encode())) + value.encode()
                       for name, value in headers.items())
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _event(name: str, data: dict[str, Any]) -> bytes:
    # Bedrock pads every event's payload with a "p" field of varying length.
    payload = json.dumps({**data, "p": "abcdefghijklmnop"[: 3 + len(name) % 10]}).encode()
    return event_frame({":event-type": name, ":content-type": "application/json",
                        ":message-type": "event"}, payload)


_AWS_STATUSES = {"ThrottlingException": 429, "ValidationException": 400,
                 "AccessDeniedException": 403, "ModelNotReadyException": 429,
                 "ServiceUnavailableException": 503, "ModelTimeoutException": 408,
                 "InternalServerException": 500, "ResourceNotFoundException": 404}
_BEDROCK_PATH = re.compile(r"/model/([^/]+)/(converse|converse-stream)")
_AUTHORIZATION = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/"
                            r"aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})")


class BedrockFake(_Server):
    """Bedrock Runtime's Converse API; every request's SigV4 signature is verified."""

    def __init__(self, access_key: str, secret_key: str, region: str) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        super().__init__()

    def handle(self, request: Seen) -> Reply:
        problem = self.verify(request)
        if problem is not None:
            return self._aws_error("InvalidSignatureException", problem, 403)
        found = _BEDROCK_PATH.fullmatch(urlsplit(request.path).path)
        if found is None:
            return self._aws_error("UnknownOperationException", "no such operation", 404)
        model, operation = unquote(found.group(1)), found.group(2)
        body = request.json()
        invalid = self._check(body)
        if invalid is not None:
            return self._aws_error("ValidationException", invalid)
        text = self._last_user_text(body)
        name, value = _directive(text)
        if name == "error":
            return self._aws_error(value, f"fake {value}")
        blocks, stop = self._reply(model, body, text)
        usage = {"inputTokens": self._prompt_tokens(body),
                 "outputTokens": sum(_words(b.get("text", "")) or 1 for b in blocks)}
        usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"]
        if operation == "converse":
            return _json({"output": {"message": {"role": "assistant", "content": blocks}},
                          "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 12}})
        return Reply(self._stream(blocks, stop, usage, name, value),
                      content_type="application/vnd.amazon.eventstream")

    def verify(self, request: Seen) -> str | None:
        """Recompute the request's SigV4 signature with botocore, as AWS would; None if it
        matches, else what is wrong."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        found = _AUTHORIZATION.fullmatch(request.headers.get("authorization", ""))
        if found is None:
            return "missing or malformed Authorization header"
        access_key, day, region, service, signed, signature = found.groups()
        if access_key != self.access_key:
            return "The security token included in the request is invalid."
        if region != self.region or service != "bedrock":
            return f"Credential should be scoped to {self.region}/bedrock, not {region}/{service}"
        stamp = request.headers.get("x-amz-date", "")
        if not stamp.startswith(day):
            return "x-amz-date does not match the credential scope's date"
        names = signed.split(";")
        if "host" not in names:
            return "host must be signed"
        aws = AWSRequest(method=request.method, url=f"http://{request.headers['host']}"
                         f"{request.path}", data=request.body,
                         headers={name: request.headers.get(name, "") for name in names})
        aws.context["timestamp"] = stamp
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key), "bedrock", self.region)
        expected = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
        if not hmac.compare_digest(expected, signature):
            return ("The request signature we calculated does not match the signature you "
                    "provided.")
        return None

    @staticmethod
    def _aws_error(kind: str, message: str, status: int | None = None) -> Reply:
        return _json({"message": message}, status or _AWS_STATUSES.get(kind, 400),
                     headers={"x-amzn-ErrorType":
                              f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"})

    @staticmethod
    def _check(body: dict[str, Any]) -> str | None:
        """Bedrock's own validation: alternating roles, each toolResult answers a toolUse."""
        used: set[str] = set()
        previous = None
        for message in body.get("messages", []):
            if message["role"] == previous:
                return "A conversation must alternate between user and assistant roles."
            previous = message["role"]
            for block in message["content"]:
                if "toolUse" in block:
                    used.add(block["toolUse"]["toolUseId"])
                if "toolResult" in block and block["toolResult"]["toolUseId"] not in used:
                    return ("The toolResult blocks at messages.0.content contain a toolUseId "
                            "that has no corresponding toolUse block.")
                if "image" in block:
                    base64.b64decode(block["image"]["source"]["bytes"], validate=True)
        return None

    @staticmethod
    def _last_user_text(body: dict[str, Any]) -> str:
        for message in reversed(body.get("messages", [])):
            if message["role"] == "user":
                return " ".join(b["text"] for b in message["content"] if "text" in b)
        return ""

    @staticmethod
    def _prompt_tokens(body: dict[str, Any]) -> int:
        blocks = [*body.get("system", []),
                  *(b for m in body.get("messages", []) for b in m["content"])]
        return sum(_words(b.get("text", "")) or 1 for b in blocks)

    @staticmethod
    def _reply(model: str, body: dict[str, Any], text: str) -> tuple[list[dict[str, Any]], str]:
        last = body["messages"][-1]["content"]
        results = [b["toolResult"] for b in last if "toolResult" in b]
        tools = body.get("toolConfig", {}).get("tools", [])
        if results:
            said = ", ".join(" ".join(c.get("text", "") for c in r["content"]) for r in results)
            return [{"text": f"Tool said: {said}"}], "end_turn"
        if tools:
            spec = tools[0]["toolSpec"]
            takes = spec["inputSchema"]["json"].get("properties")
            return [{"toolUse": {"toolUseId": "tooluse_fake01", "name": spec["name"],
                                 "input": {"city": text} if takes else {}}}], "tool_use"
        images = [b["image"] for b in last if "image" in b]
        text_format = body.get("outputConfig", {}).get("textFormat")
        if text_format is not None:
            reply = json.dumps({"reply": text})
        else:
            reply = f"Bedrock reply to: {text}"
            if images:
                reply += " [images: " + ", ".join(
                    f"{i['format']} {len(base64.b64decode(i['source']['bytes']))} bytes"
                    for i in images) + "]"
            system = " ".join(b["text"] for b in body.get("system", []))
            if system:
                reply += f" [system: {system}]"
        words = reply.split(" ")
        limit = body.get("inferenceConfig", {}).get("maxTokens")
        if isinstance(limit, int) and limit < len(words):
            return [{"text": " ".join(words[:limit])}], "max_tokens"
        for stop in body.get("inferenceConfig", {}).get("stopSequences", []):
            if stop in reply:
                return [{"text": reply.split(stop, 1)[0]}], "stop_sequence"
        return [{"text": reply}], "end_turn"

    @staticmethod
    def _stream(blocks: list[dict[str, Any]], stop: str, usage: dict[str, int],
                directive: str, value: str) -> Iterator[bytes]:
        frames = [_event("messageStart", {"role": "assistant"})]
        for index, block in enumerate(blocks):
            if "toolUse" in block:
                use = block["toolUse"]
                frames.append(_event("contentBlockStart", {"contentBlockIndex": index, "start": {
                    "toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}))
                # no input at all for a call without arguments, as Bedrock streams it
                arguments = json.dumps(use["input"]) if use["input"] else ""
                frames += [_event("contentBlockDelta", {"contentBlockIndex": index, "delta": {
                    "toolUse": {"input": arguments[at:at + 6]}}})
                    for at in range(0, len(arguments), 6)]
            else:
                words = block["text"].split(" ")
                frames += [_event("contentBlockDelta", {"contentBlockIndex": index, "delta": {
                    "text": w if i == 0 else " " + w}}) for i, w in enumerate(words)]
            frames.append(_event("contentBlockStop", {"contentBlockIndex": index}))
        frames.append(_event("messageStop", {"stopReason": stop}))
        frames.append(_event("metadata", {"usage": usage, "metrics": {"latencyMs": 12}}))
        if directive == "exception":
            frames[3:] = [event_frame({":exception-type": value,
                                       ":content-type": "application/json",
                                       ":message-type": "exception"},
                                      json.dumps({"message": f"fake {value}"}).encode())]
        elif directive in ("badcrc", "badcrcfirst"):
            at = 0 if directive == "badcrcfirst" else 3
            broken = bytearray(frames[at])
            broken[-1] ^= 0xFF
            frames[at] = bytes(broken)
        elif directive == "cut":
            frames = frames[:3]
        # Frames split at odd places across writes, as a network delivers them.
        data = b"".join(frames)
        for at in range(0, len(data), 37):
            yield data[at:at + 37]
