"""What the gateway offers plugins at run time (`plugin.services`), e.g. calling a model of the policy."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from gateway.errors import ModelNotFound
from gateway.plugin import Caller, RequestContext

if TYPE_CHECKING:
    from gateway.runtime import Runtime


class Services:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def has_model(self, model: str) -> bool:
        return model in self._runtime.routes

    @property
    def models(self) -> list[str]:
        return list(self._runtime.routes)

    async def complete(self, model: str, body: dict[str, Any], *, caller: str = "gateway") -> dict[str, Any]:
        """A whole chat completion from `model` (a name in the policy's models), through its routing,
        retries and fallbacks but none of its plugins. Raises the gateway's errors on failure."""
        from gateway.dispatch import dispatch  # here, not at import: dispatch needs the runtime module

        route = self._runtime.routes.get(model)
        if route is None:
            raise ModelNotFound(f"The model {model!r} does not exist.")
        ctx = RequestContext(
            request_id=f"internal-{uuid.uuid4().hex}",
            endpoint="chat",
            body={**body, "model": model, "stream": False},
            headers={},
            caller=Caller(caller, authenticated=True),
            route=route,
            stream=False,
        )
        _, answer, _ = await dispatch(self._runtime, ctx, {}, stream=False)
        assert isinstance(answer, dict)
        return answer
