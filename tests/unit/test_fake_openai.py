"""The fake OpenAI server, driven by the real ``openai`` SDK over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from pydantic import BaseModel

from tests.fixtures.fake_openai import FakeOpenAIServer, Reply

MODEL = "gpt-4o-mini"
MESSAGES: list[Any] = [{"role": "user", "content": "Hello"}]
PROFILE_SCHEMA = {
    "type": "object",
    "properties": {"company": {"type": "string"}, "employees": {"type": "integer"}},
    "required": ["company", "employees"],
    "additionalProperties": False,
}
RESPONSE_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "profile", "strict": True, "schema": PROFILE_SCHEMA},
}


class Profile(BaseModel):
    company: str
    employees: int


@pytest_asyncio.fixture(loop_scope="session")
async def client(openai_server: FakeOpenAIServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        api_key="test", base_url=openai_server.base_url, max_retries=0, timeout=5
    ) as sdk:
        yield sdk


async def wait_for_disconnects(server: FakeOpenAIServer, count: int = 1) -> None:
    for _ in range(200):
        if server.disconnects >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} disconnect(s), saw {server.disconnects}")


@pytest.mark.asyncio(loop_scope="session")
async def test_stream_arrives_in_scripted_chunks_with_usage(
    openai_server: FakeOpenAIServer, client: openai.AsyncOpenAI
) -> None:
    openai_server.script(Reply(chunks=["Hel", "lo ", "there", "!"]))
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    pieces: list[str] = []
    finish_reasons: list[str] = []
    usage = None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == MODEL
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    assert pieces == ["Hel", "lo ", "there", "!"]
    assert "".join(pieces) == "Hello there!"
    assert finish_reasons == ["stop"]
    assert usage is not None
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert openai_server.disconnects == 0


@pytest.mark.asyncio(loop_scope="session")
async def test_stream_without_usage_and_default_reply(
    openai_server: FakeOpenAIServer, client: openai.AsyncOpenAI
) -> None:
    openai_server.default = Reply(text="Default words here")
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Default words here"
    assert len(chunks) == 5  # role, three words, finish


@pytest.mark.asyncio(loop_scope="session")
async def test_non_stream_reply_follows_script_then_default(
    openai_server: FakeOpenAIServer, client: openai.AsyncOpenAI
) -> None:
    openai_server.default = Reply(text="fallback")
    openai_server.script(Reply(text="first"), Reply(text="second"))
    answers = []
    for _ in range(3):
        completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert completion.object == "chat.completion"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None
        assert completion.usage.total_tokens > 0
        answers.append(completion.choices[0].message.content)
    assert answers == ["first", "second", "fallback"]
    assert openai_server.pending_replies == 0
    assert len(openai_server.requests) == 3


@pytest.mark.asyncio(loop_scope="session")
async def test_structured_output_json_is_parsed(
    openai_server: FakeOpenAIServer, client: openai.AsyncOpenAI
) -> None:
    profile = {"company": "Acme", "employees": 42}
    openai_server.script(Reply(json_content=profile), Reply(json_content=profile))
    completion = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format=RESPONSE_FORMAT, temperature=0.1
    )
    assert json.loads(completion.choices[0].message.content or "") == profile

    parsed = await client.chat.completions.parse(
        model=MODEL, messages=MESSAGES, response_format=Profile, temperature=0.1
    )
    assert parsed.choices[0].message.parsed == Profile(company="Acme", employees=42)


@pytest.mark.asyncio(loop_scope="session")
async def test_refusal_surfaces_as_message_refusal(
    openai_server: FakeOpenAIServer, client: openai.AsyncOpenAI
) -> None:
    openai_server.script(Reply(refusal="I can't help with that."))
    completion = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format=RESPONSE_FORMAT
    )
    message = completion.choices[0].message
    assert message.refusal == "I can't help with that."
    assert message.content is None


@pytest.mark.asyncio(loop_scope="session")
async def test_length_finish_reason(
    openai_server: FakeOpenAIServer, client: openai.AsyncOpenAI
) -> None:
    openai_server.script(Reply(text="cut sho", finish_reason="length"))
    completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.choices[0].finish_reason == "length"

    openai_server.script(Reply(json_content={"company": "Ac"}, finish_reason="length"))
    with pytest.raises(openai.LengthFinishReasonError):
        await client.chat.completions.parse(model=MODEL, messages=MESSAGES, response_format=Profile)


@pytest.mark.asyncio(loop_scope="session")
async def test_rate_limit_and_server_errors(
    openai_server: FakeOpenAIServer, client: openai.AsyncOpenAI
) -> None:
    openai_server.script(Reply(status=429, headers={"retry-after": "7"}), Reply(status=500))
    with pytest.raises(openai.RateLimitError) as rate_limited:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert rate_limited.value.response.headers["retry-after"] == "7"
    assert rate_limited.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)


@pytest.mark.asyncio(loop_scope="session")
async def test_delay_longer_than_client_timeout(
    openai_server: FakeOpenAIServer, client: openai.AsyncOpenAI
) -> None:
    openai_server.script(Reply(delay_seconds=5))
    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=0.3).chat.completions.create(
            model=MODEL, messages=MESSAGES
        )
    await wait_for_disconnects(openai_server)  # the server gave up waiting, too


@pytest.mark.asyncio(loop_scope="session")
async def test_closing_a_stream_early_counts_a_disconnect(
    openai_server: FakeOpenAIServer, client: openai.AsyncOpenAI
) -> None:
    openai_server.script(Reply(chunks=["a", "b", "c", "d"], chunk_delay_seconds=0.2))
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()
    await wait_for_disconnects(openai_server)
    assert openai_server.disconnects == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_requests_are_recorded_and_responder_routes(
    openai_server: FakeOpenAIServer, client: openai.AsyncOpenAI
) -> None:
    def responder(request: dict[str, Any]) -> Reply | None:
        if request.get("response_format"):
            return Reply(json_content={"company": "Routed", "employees": 1})
        return None  # fall through to the script / default

    openai_server.responder = responder
    openai_server.default = Reply(text="chat text")
    extraction = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format=RESPONSE_FORMAT, temperature=0.1
    )
    chat = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert json.loads(extraction.choices[0].message.content or "")["company"] == "Routed"
    assert chat.choices[0].message.content == "chat text"

    [recorded] = openai_server.requests_with_response_format()
    assert recorded["response_format"] == RESPONSE_FORMAT
    assert recorded["temperature"] == 0.1
    assert recorded["messages"] == MESSAGES
    [plain] = openai_server.chat_requests()
    assert "response_format" not in plain

    openai_server.reset()
    assert openai_server.requests == []
    assert openai_server.responder is None


def test_sync_use_instant_mode_and_lifecycle() -> None:
    server = FakeOpenAIServer()
    with server:
        server.instant("fast")
        sdk = openai.OpenAI(api_key="test", base_url=server.base_url, max_retries=0)
        for _ in range(5):
            reply = sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
            assert reply.choices[0].message.content == "fast"
        assert len(server.chat_requests()) == 5
        missing = httpx.post(server.base_url.replace("/v1", "/v1/embeddings"), json={})
        assert missing.status_code == 404
        assert "error" in missing.json()
        sdk.close()
    with pytest.raises(AssertionError):
        _ = server.base_url


@pytest.mark.asyncio(loop_scope="session")
async def test_billed_tokens_count_whole_answers_only(
    openai_server: FakeOpenAIServer, client: openai.AsyncOpenAI
) -> None:
    usage = {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}
    openai_server.script(
        Reply(text="one", usage=usage),
        Reply(status=429),
        Reply(chunks=["a", "b"], usage={**usage, "total_tokens": 7}),
    )
    completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.usage is not None
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    # A stream that did not ask for its usage is billed all the same.
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert [chunk async for chunk in stream]
    assert openai_server.billed_tokens == [42, 7]
