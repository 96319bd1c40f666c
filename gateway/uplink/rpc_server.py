"""The cloud's JSON-RPC requests (CONTRACT section 2), served beside the uplink's connection.

Each request runs in its own task, at most RPC_CONCURRENCY at once (a device command waits for its ack:
up to minutes), outside the connection's task group: it keeps running (and is recorded) when the link drops
meanwhile, and its answer goes out on whatever connection is up when it is ready. A request id seen before
is answered from the stored first answer, or from the first execution still running, never executed twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiomqtt
import structlog

from gateway.core.clock import Clock
from gateway.core.metrics import Metrics
from gateway.core.models import RpcDone, StoreRecord
from gateway.uplink.rpc import Dispatcher, RpcError, encode, error_response, parse_request

log = structlog.get_logger(__name__)

RPC_CONCURRENCY = 16


class StoredAnswers(Protocol):
    async def rpc_answer(self, request_id: str) -> str | None: ...


class AnswerStore(Protocol):
    async def put(self, record: StoreRecord) -> None: ...

    async def flush(self, *, urgent: bool = False) -> None: ...


class RpcServer:
    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        answers: StoredAnswers,
        writer: AnswerStore,
        respond: Callable[[bytes], Awaitable[None]],
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self._dispatcher = dispatcher
        self._answers = answers
        self._writer = writer
        self._respond = respond
        self._metrics = metrics
        self._clock = clock
        self._running: dict[str, asyncio.Future[bytes | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(RPC_CONCURRENCY)

    async def take(self, payload: bytes) -> None:
        """Start serving one request (waits while RPC_CONCURRENCY are being served)."""
        await self._slots.acquire()
        task = asyncio.create_task(self._serve(payload), name="uplink-rpc-request")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_all(self) -> None:
        """At shutdown: stop serving requests still running (their commands stay in the audit log)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)

    async def _serve(self, payload: bytes) -> None:
        try:
            response = await self._answer(payload)
            if response is not None:
                await self._respond(response)
        except aiomqtt.MqttError as exc:  # the answer is stored: a repeat of the request gets it
            log.warning("uplink.rpc_answer_not_sent", error=str(exc))
        except Exception:
            self._metrics.inc("gateway_rpc_errors_total", 1, "cloud requests that failed unexpectedly")
            log.exception("uplink.rpc_failed")
        finally:
            self._slots.release()

    async def _answer(self, payload: bytes) -> bytes | None:
        try:
            request = parse_request(payload)
        except RpcError as err:
            self._metrics.inc("gateway_rpc_requests_total", 1, "cloud JSON-RPC requests", result="invalid")
            return encode(error_response(err))
        key = request.id_key
        if key is not None:
            running = self._running.get(key)
            if running is not None:  # the same id while the first is still being served
                self._metrics.inc("gateway_rpc_requests_total", 1, result="repeat")
                return await asyncio.shield(running)
            earlier = await self._answers.rpc_answer(key)
            if earlier is not None:  # a repeated id: the first answer, not a second execution
                self._metrics.inc("gateway_rpc_requests_total", 1, result="repeat")
                return earlier.encode()
            if key in self._running:  # arrived while we looked in the log
                return await asyncio.shield(self._running[key])
            fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            self._running[key] = fut
        try:
            response = encode(await self._dispatcher.call(request))
            self._metrics.inc("gateway_rpc_requests_total", 1, result="answered")
            if key is None:
                return None  # a notification gets no answer
            await self._writer.put(RpcDone(key, request.method, response.decode(), self._clock.now()))
            await self._writer.flush()
            fut.set_result(response)
            return response
        except BaseException as exc:
            if key is not None and not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("request cancelled"))
                fut.exception()  # retrieved: waiters get it through their shield
            raise
        finally:
            if key is not None:
                self._running.pop(key, None)
