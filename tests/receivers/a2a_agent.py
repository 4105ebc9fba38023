#!/usr/bin/env python3
"""A kagent-like A2A agent server for end-to-end tests, built on the official `a2a-sdk` package.

Usage: a2a_agent.py OUTPUT_FILE [--agent NAMESPACE/NAME] [--port PORT]

Binds 127.0.0.1 (PORT, or a free port when absent or 0) and prints the bound port alone on the
first line of stdout. It serves what ktrigger's `kagent` destination talks to:

- `POST /api/sessions`: kagent's session API, reduced to what a caller sees. The JSON body must
  name the served agent in `agent_ref` ("NAMESPACE/NAME", default kagent/k8s-agent); the answer is
  HTTP 201 with `{"error": false, "data": {"id", "name", "user_id", "agent_ref"}}`.
- `POST /api/a2a/NAMESPACE/NAME/` (and without the trailing slash): the A2A JSON-RPC endpoint of
  the SDK, with its v0.3 compatibility on (`message/send`), and the agent card under
  `/api/a2a/NAMESPACE/NAME/.well-known/agent-card.json`.

The agent completes a task whose status message and artifact echo the prompt. Marks in the prompt
change that: `[fail-task]` makes the task fail, `[reject-params]` makes the SDK answer the
JSON-RPC error -32602 (invalid params), `[internal-error]` the JSON-RPC error -32603.

Every session request and every message that reaches the agent is appended to OUTPUT_FILE as one
JSON line: `{"kind": "session", "body", "query_user_id", "headers"}`, `{"kind": "message", "text",
"messageId", "contextId", "taskId", "headers"}` for messages the agent ran, or `{"kind": "refused",
"text", "messageId", "contextId", "headers"}` for those answered with a JSON-RPC error (headers:
x-user-id and authorization).
"""

import argparse
import json
import socket
import sys
import threading
import uuid

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from a2a.helpers import get_message_text, new_task, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    TaskState,
)
from a2a.utils.errors import InternalError, InvalidParamsError

_write_lock = threading.Lock()
_RECORDED_HEADERS = ("x-user-id", "authorization")


class Recorder:
    """Appends one JSON line per received request to the output file."""

    def __init__(self, path):
        self.path = path

    def write(self, record):
        line = json.dumps(record, sort_keys=True)
        with _write_lock:
            with open(self.path, "a", encoding="utf-8") as output:
                output.write(line + "\n")
                output.flush()


def _headers(headers):
    """The request headers the tests look at, by lowercase name."""
    return {name: headers[name] for name in _RECORDED_HEADERS if name in headers}


class EchoExecutor(AgentExecutor):
    """Completes every task with an echo of the prompt, or fails it when asked to."""

    def __init__(self, recorder):
        self.recorder = recorder

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message = context.message
        text = get_message_text(message) if message else ""
        self.recorder.write(
            {
                "kind": "message",
                "text": text,
                "messageId": message.message_id if message else None,
                "contextId": context.context_id,
                "taskId": context.task_id,
                "headers": _headers(context.call_context.state.get("headers", {})),
            }
        )
        task = context.current_task
        if task is None:
            task = new_task(
                task_id=context.task_id,
                context_id=context.context_id,
                state=TaskState.TASK_STATE_SUBMITTED,
                history=[message] if message else [],
            )
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        if "[fail-task]" in text:
            await updater.failed(
                new_text_message(
                    "cannot diagnose: the cluster API is unreachable",
                    context_id=task.context_id,
                    task_id=task.id,
                )
            )
            return
        await updater.add_artifact([new_text_part(f"echo: {text}")], name="answer")
        await updater.complete(
            new_text_message(f"echo: {text}", context_id=task.context_id, task_id=task.id)
        )

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.cancel()


class MarkedErrorsHandler(DefaultRequestHandler):
    """The SDK's request handler, turning marked prompts into JSON-RPC errors."""

    def __init__(self, recorder, **kwargs):
        super().__init__(**kwargs)
        self.recorder = recorder

    async def on_message_send(self, params, context):
        text = get_message_text(params.message)
        if "[reject-params]" in text:
            error = InvalidParamsError(message="the agent refuses prompts marked [reject-params]")
        elif "[internal-error]" in text:
            error = InternalError(message="the agent's model backend is unavailable")
        else:
            return await super().on_message_send(params, context)
        self.recorder.write(
            {
                "kind": "refused",
                "text": text,
                "messageId": params.message.message_id,
                "contextId": params.message.context_id,
                "headers": _headers(context.state.get("headers", {})),
            }
        )
        raise error


def build_app(recorder, agent_ref, port):
    """The Starlette application: sessions plus the agent's A2A endpoint."""
    namespace, name = agent_ref.split("/", 1)
    prefix = f"/api/a2a/{namespace}/{name}"
    card = AgentCard(
        name=name,
        description="Echoes the prompt it receives (ktrigger end-to-end tests).",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(
                url=f"http://127.0.0.1:{port}{prefix}/",
                protocol_binding="JSONRPC",
                protocol_version="0.3",
            )
        ],
        capabilities=AgentCapabilities(streaming=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="Echo", description="Echoes the prompt", tags=["test"])],
    )
    handler = MarkedErrorsHandler(
        recorder,
        agent_executor=EchoExecutor(recorder),
        task_store=InMemoryTaskStore(),
        agent_card=card,
    )

    async def create_session(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": True, "message": "Invalid request body"}, status_code=400)
        recorder.write(
            {
                "kind": "session",
                "body": body,
                "query_user_id": request.query_params.get("user_id"),
                "headers": _headers(request.headers),
            }
        )
        if not isinstance(body, dict) or not body.get("agent_ref"):
            return JSONResponse({"error": True, "message": "agent_ref is required"}, status_code=400)
        if body["agent_ref"] != agent_ref:
            message = f"Agent ref is invalid, please check the agent ref {body['agent_ref']}"
            return JSONResponse({"error": True, "message": message}, status_code=400)
        session = {
            "id": str(uuid.uuid4()),
            "name": body.get("name"),
            "user_id": request.query_params.get("user_id") or request.headers.get("x-user-id"),
            "agent_ref": agent_ref,
        }
        return JSONResponse(
            {"error": False, "message": "Successfully created session", "data": session},
            status_code=201,
        )

    routes = [Route("/api/sessions", create_session, methods=["POST"])]
    for path in (f"{prefix}/", prefix):
        routes += create_jsonrpc_routes(handler, rpc_url=path, enable_v0_3_compat=True)
    routes += create_agent_card_routes(card, card_url=f"{prefix}/.well-known/agent-card.json")
    return Starlette(routes=routes)


def main(argv):
    """Runs the server until it is told to stop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--agent", default="kagent/k8s-agent")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv[1:])
    if args.agent.count("/") != 1:
        parser.error("--agent must be NAMESPACE/NAME")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    port = sock.getsockname()[1]

    app = build_app(Recorder(args.output), args.agent, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    print(port, flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
