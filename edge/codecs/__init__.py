"""Codecs: one module per wire format, translating it to and from the hub (`edge.hub`).

A codec is sans-IO: pure functions (and two small state machines for streams) over
decoded JSON, with no sockets, clocks or randomness (ids and timestamps are passed in),
never mutating their input. Every format codec offers the same six things:

=====================  =====  ==================================================
``decode_request``     door   client body -> `hub.Request`; `BadRequest` names the field
``encode_answer``      door   `hub.Answer` -> the client's answer body
``StreamEncoder``      door   ``feed(hub.Event) -> [door item]``
``encode_request``     kind   `hub.Request` -> the upstream body; `BadRequest` (via the
                              parts' ``where``) when the target cannot express something
``decode_answer``      kind   upstream body -> `hub.Answer`; `UpstreamError` on a bad shape
``StreamDecoder``      kind   ``feed(upstream item) -> [hub.Event]``, ``finish()`` at the
                              upstream's normal end; `UpstreamError` on errors, bad order
=====================  =====  ==================================================

Formats:

* `edge.codecs.chat` — OpenAI Chat Completions: door ``/v1/chat/completions``; kind
  ``openai`` (and later ``azure``). Stream items are ``chat.completion.chunk`` dicts.
* `edge.codecs.messages` — Anthropic Messages: door ``/v1/messages``; kind ``anthropic``.
  Stream items are ``(event, data)`` pairs.
* `edge.codecs.gemini` — Google Gemini ``generateContent``: kind ``gemini`` (kind half
  only). Stream items are the SSE chunks' decoded JSON.
* `edge.codecs.bedrock` — AWS Bedrock Converse: kind ``bedrock`` (kind half only).
  Stream items are ``(event type, payload)`` pairs out of `edge.eventstream` frames.
"""
