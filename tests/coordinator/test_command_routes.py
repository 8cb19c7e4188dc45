"""A route that names a table command is served without a handler of its own (coordinator/routes.py rule 5)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from coordinator.api import Call
from coordinator.auth import Principal
from coordinator.errors import BadRequestError
from coordinator.handlers import Handlers
from coordinator.routes import Route


class RecordingNode:
    """Stands in for the node: records the commands a handler runs and answers each with a fixed value."""

    def __init__(self) -> None:
        self.executed: list[tuple[str, dict[str, Any], str, str]] = []

    async def execute(self, op: str, kwargs: dict[str, Any], client_id: str, request_id: str) -> Any:
        self.executed.append((op, kwargs, client_id, request_id))
        return {"window_id": kwargs.get("window_id"), "state": "pending"}


ROUTE = Route(
    "POST",
    "/v1/windows/{window_id}/reset-attempts",
    "reset_attempts",
    "operator",
    "Operator: clear a window's attempts",
    "ReasonRequest",
    "WindowAnswer",
    errors=(400, 404),
    write=True,
    command="reset_attempts",
)


def _call(body: dict[str, Any]) -> Call:
    request = make_mocked_request("POST", "/v1/windows/w-1/reset-attempts", match_info={"window_id": "w-1"})
    return Call(request, body, Principal("ops", "operator"), "client", "req-1")


async def test_path_parameters_and_body_become_the_commands_arguments() -> None:
    """The generic handler runs the route's command with the path parameters and the parsed body (defaults
    filled in), keeps the request ids, and answers the command's value with the route's status."""
    node = RecordingNode()
    handle = Handlers(node, {}).command_route(ROUTE)  # type: ignore[arg-type]
    response = await handle(_call({}))
    assert node.executed == [("reset_attempts", {"window_id": "w-1", "reason": ""}, "client", "req-1")]
    assert response.status == 200
    assert json.loads(response.text or "") == {"window_id": "w-1", "state": "pending"}


async def test_a_bad_body_is_a_400_naming_the_field_and_runs_nothing() -> None:
    """The body is validated with the route's wire model before any command is submitted."""
    node = RecordingNode()
    handle = Handlers(node, {}).command_route(ROUTE)  # type: ignore[arg-type]
    with pytest.raises(BadRequestError) as info:
        await handle(_call({"reason": 5}))
    assert info.value.field == "reason" and node.executed == []


def test_a_command_route_needs_a_wire_model_as_its_request() -> None:
    """Naming a request schema that is not a wire model is refused when the app is built, not at request time."""
    bad = Route("POST", "/v1/x", "x", "operator", "x", "LeaseList", command="x")
    with pytest.raises(ValueError, match="wire model"):
        Handlers(RecordingNode(), {}).command_route(bad)  # type: ignore[arg-type]
