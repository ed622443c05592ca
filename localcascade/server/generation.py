"""One request's reply as a stream of events, across rounds when the server runs python.

Without a server tool a reply is one scheduler job and its events pass through as they are.
With ``serve --tools python`` the model is also offered the ``python`` tool; a round that
stops at a python call (the decoder stops right after its ``</tool_call>``) has the code run
in the sandbox on a worker thread (ToolCallFinished events report each call), and the reply
goes on as a new job: the conversation plus the assistant's call and the ``tool`` message,
resubmitted to the scheduler, which finds the sequence still holding the conversation and
evaluates only the new tokens. The answer sampler (a grammar's state) goes along, so a
grammar spans the whole reply as it does in ``ask --tools python``. The cap, refusals and
summed usage are ``tools.loop.ToolRounds``'s, the same as ask's.

Calls to the client's own tools end the reply with ``tool_calls`` as before; a python call
in the same round as a client call is not run (the reply is the client's to continue).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, replace
from typing import AsyncIterator

from localcascade.engine.events import ThinkingText, TurnStats
from localcascade.engine.tool_calls import parse_tool_calls
from localcascade.server.reply import AnswerFilter
from localcascade.server.scheduler import Failed, Job, Scheduler, Started
from localcascade.server.schema import Work, message_key, reply_key
from localcascade.tools.loop import DEFAULT_MAX_CALLS, ToolCallFinished, ToolRounds
from localcascade.tools.python_tool import NAME, PythonTool, schema


@dataclass(frozen=True)
class ServerTool:
    """The python tool the server runs for every request (``serve --tools python``)."""

    tool: PythonTool
    max_calls: int = DEFAULT_MAX_CALLS


class RoundEnded:
    """A round stopped at a python call: the answer filter gives back what it held (the call)."""


def offer_python(work: Work, tool_choice) -> bool:
    """Whether this request is offered the server's python tool (not when the client turned
    tools off, nor when it defines a tool of that name itself: then calls to it are its own)."""
    names = {t.get("function", {}).get("name") for t in work.tools or ()}
    return tool_choice != "none" and NAME not in names


def with_python(work: Work) -> Work:
    tools = list(work.tools or ()) + [schema()]
    return replace(work, tools=tools, parse_tools=True,
                   key=(json.dumps(tools, sort_keys=True),) + work.key[1:])


def read_round(text: str, work: Work) -> tuple[str, list]:
    """(content, tool calls) of a round's answer text, as the client is shown them."""
    shown = AnswerFilter(stop=work.stop, parse_tools=work.parse_tools, max_calls=work.max_calls)
    shown.feed(text)
    _, calls = shown.finish()
    return shown.content, calls


class Generation:
    """Submits the request's job(s) and hands out the reply's events (see the module doc)."""

    def __init__(self, scheduler: Scheduler, work: Work, served: ServerTool | None) -> None:
        self.scheduler = scheduler
        self.served = served
        self.work = work
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()     # polled by running code too: it is killed
        self._rounds = ToolRounds(work.options, served.max_calls) if served else None
        self._thought: list[str] = []
        self.job = self._job(work, None)
        scheduler.follow(self)      # a stopping server kills the code this reply runs

    def submit(self) -> None:
        """Queue the first round; QueueFull when the server is full."""
        self.scheduler.submit(self.job)

    def cancel(self) -> None:
        """The client went away: stop generating, kill running code (any thread)."""
        self._cancelled.set()
        self.scheduler.cancel(self.job)

    def stop_round(self) -> None:
        """A stop string was met: the reply ends with this round."""
        self._cancelled.set()
        self.job.stop()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def events(self) -> AsyncIterator[object]:
        """Started or Failed first; then thinking/answer text, RoundEnded and ToolCallFinished
        between rounds, and one TurnStats (summed over the rounds) or a Failed at the end."""
        first_round = True
        while True:
            event = await self._events.get()
            if isinstance(event, Started) and not first_round:
                continue      # the reply started once; later rounds are its continuation
            if isinstance(event, ThinkingText):
                self._thought.append(event.text)
            if isinstance(event, TurnStats) and self.served is not None:
                next_work = None
                async for out in self._end_round(event):
                    if isinstance(out, Work):
                        next_work = out
                    else:
                        yield out
                if next_work is None:
                    return
                first_round = False
                continue
            yield event
            if isinstance(event, (Failed, TurnStats)):
                return

    async def _end_round(self, stats: TurnStats):
        """Run the round's python call and yield the next round's Work, or yield the final stats."""
        job, rounds = self.job, self._rounds
        sampler, job.kept_sampler = job.kept_sampler, None
        try:
            content, calls = read_round("".join(job.answer), job.work)
            go_on = rounds.end_round(stats) and all(c.name == NAME for c in calls) and not self.cancelled
            if go_on:
                yield RoundEnded()
                called = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                          for c in calls]
                ran = rounds.run_calls(called, self.served.tool, self._cancelled.is_set)
                while (event := await asyncio.to_thread(next, ran, None)) is not None:
                    if isinstance(event, ToolCallFinished):
                        yield event
                options = rounds.next_options(self.cancelled)
                go_on = options is not None
            if not go_on:
                yield rounds.summed()
                return
            assistant = {"role": "assistant", "content": content, "tool_calls": called}
            if self._thought:
                assistant["reasoning_content"] = "".join(self._thought).strip()
            self._thought = []
            results = [{"role": "tool", "content": text} for text in rounds.results]
            work = replace(job.work, messages=job.work.messages + [assistant] + results, options=options,
                           key=job.work.key + tuple(message_key(m) for m in [assistant] + results))
            self.job = self._job(work, sampler)
            sampler = None                # the next round owns it
            self.scheduler.submit(self.job, continuation=True)
            if self.cancelled:            # a disconnect between the two rounds
                self.scheduler.cancel(self.job)
            yield work
        finally:
            if sampler is not None:       # the reply ends here, or the client went away mid-call
                sampler.close()

    def _job(self, work: Work, sampler) -> Job:
        def deliver(event: object) -> None:
            try:
                self._loop.call_soon_threadsafe(self._events.put_nowait, event)
            except RuntimeError:   # the event loop has closed: the server is stopping
                pass

        def key_of(text: str) -> tuple:
            return reply_key(*read_round(text, work))

        stop_after_call = _ends_in_python_call if self.served is not None else None
        return Job(work, deliver, key_of, stop_after_call=stop_after_call, answer_sampler=sampler)


def _ends_in_python_call(text: str) -> bool:
    _, calls = parse_tool_calls(text)
    return bool(calls) and calls[-1].name == NAME
