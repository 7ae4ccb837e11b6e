"""What RequestLimits costs each request, counted rather than timed: one asyncio task (the hang-up watcher) and one
timer for the body's deadline, not a task and a timer per body read (asyncio.wait_for); the deadline still answers
408 to a read left waiting."""

import asyncio
import json

from mlx_qwen3_embed.serve.limits import RequestLimits

SCOPE = {"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": []}


async def reading_app(scope, receive, send):
    """Reads the whole body, then answers it back."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def serve_once(parts: list[bytes], body_timeout: float = 30.0, complete: bool = True) -> tuple[list[dict], int]:
    """One request whose body comes in `parts` (the last one ends it unless not `complete`; then nothing more)
    through RequestLimits: (messages sent, asyncio tasks created while it ran)."""
    sent, created = [], []

    async def main():
        loop = asyncio.get_running_loop()
        pending = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1 or not complete}
                   for i, p in enumerate(parts)]
        idle = asyncio.Event()

        async def receive():
            if pending:
                return pending.pop(0)
            await idle.wait()  # the client neither sends more nor leaves

        async def send(message):
            sent.append(message)

        limits = RequestLimits(reading_app, max_request_bytes=1 << 20, body_timeout=body_timeout)
        loop.set_task_factory(lambda loop, coro, **kw: created.append(coro) or asyncio.Task(coro, loop=loop, **kw))
        await limits(dict(SCOPE), receive, send)
        loop.set_task_factory(None)

    asyncio.run(main())
    return sent, len(created)


def test_a_request_costs_one_task_whatever_its_body_reads():
    for parts in ([b'{"input": "x"}'], [b'{"input"', b': "x"', b"}"]):
        sent, tasks = serve_once(parts)
        assert sent[-1]["body"] == b"".join(parts)
        assert tasks == 1  # the watcher that notices a hang-up; no task per read


def test_a_read_left_waiting_at_the_deadline_is_answered_408():
    sent, _ = serve_once([b'{"input": '], body_timeout=0.05, complete=False)  # the rest never comes
    assert sent[0]["status"] == 408
    assert json.loads(sent[-1]["body"])["error"]["code"] == "request_timeout"
