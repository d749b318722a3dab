"""A request that outlives its deadline gets 503, not a connection held open forever."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bot.app.web import RequestDeadline


async def slow(request):
    await asyncio.sleep(5)
    return PlainTextResponse("late")


async def fast(request):
    return PlainTextResponse("ok")


async def test_slow_requests_get_503_and_streams_are_exempt() -> None:
    inner = Starlette(routes=[Route("/slow", slow), Route("/fast", fast),
                              Route("/stream", slow)])
    app = RequestDeadline(inner, seconds=0.2, streaming_paths=frozenset({"/stream"}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        response = await client.get("/slow")
        assert response.status_code == 503
        assert response.json() == {"error": "Temporarily unavailable, please try again."}
        assert (await client.get("/fast")).text == "ok"
        streamed = asyncio.create_task(client.get("/stream"))
        await asyncio.sleep(0.4)
        assert not streamed.done()  # still running past the deadline
        streamed.cancel()
