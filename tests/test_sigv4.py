"""edge.sigv4 against botocore's SigV4Auth: the same signature for the same request and time."""

from __future__ import annotations

from collections import namedtuple
from datetime import UTC, datetime
from urllib.parse import quote

import pytest

from edge.sigv4 import Signer, host_of

botocore_auth = pytest.importorskip("botocore.auth")
AWSRequest = pytest.importorskip("botocore.awsrequest").AWSRequest
ReadOnly = namedtuple("ReadOnly", "access_key secret_key token")

NOW = datetime(2026, 12, 3, 18, 30, 5, tzinfo=UTC)
MODELS = ["anthropic.claude-3-haiku-20240307-v1:0", "amazon.nova-lite-v1:0",
          "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-"
          "sonnet-20240620-v1:0", "meta.llama3 70b~x", "..", "ünïcode"]


def botocore_headers(credentials: ReadOnly, url: str, body: bytes,
                     headers: dict[str, str]) -> dict[str, str]:
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    auth = botocore_auth.SigV4Auth(credentials, "bedrock", "eu-west-3")
    request.context["timestamp"] = NOW.strftime("%Y%m%dT%H%M%SZ")
    auth._modify_request_before_signing(request)
    signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)),
                               request)
    auth._inject_signature_to_request(request, signature)
    return {name.lower(): value for name, value in request.headers.items()}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("token", [None, "session/token+value=="])
@pytest.mark.parametrize("root", ["https://bedrock-runtime.eu-west-3.amazonaws.com",
                                  "http://127.0.0.1:8123", "https://bedrock.example:443"])
def test_the_signature_is_botocores(model: str, token: str | None, root: str) -> None:
    credentials = ReadOnly("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    model_id = quote(model, safe="")
    model_id = model_id.replace(".", "%2E") if model_id == ".." else model_id  # as the adapter
    path = f"/model/{model_id}/converse"
    body = b'{"messages": [{"role": "user", "content": [{"text": "hi  there"}]}]}'
    headers = {"content-type": "application/json", "accept": "application/json"}
    signer = Signer("bedrock", "eu-west-3")
    ours = dict(signer.sign(credentials, "POST", path, host_of(root + path),
                            list(headers.items()), body, NOW))
    theirs = botocore_headers(credentials, root + path, body, headers)
    assert ours["authorization"] == theirs["authorization"]
    assert ours["x-amz-date"] == theirs["x-amz-date"]
    assert ours.get("x-amz-security-token") == theirs.get("x-amz-security-token")
    # the cached signing key gives the same answer again, and a new day a new one
    assert dict(signer.sign(credentials, "POST", path, host_of(root + path),
                            list(headers.items()), body, NOW)) == ours
    tomorrow = NOW.replace(day=4)
    assert dict(signer.sign(credentials, "POST", path, host_of(root + path),
                            list(headers.items()), body, tomorrow))["authorization"] != (
        ours["authorization"])
