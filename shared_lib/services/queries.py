"""Read side: what users look at after they changed something (served from the replica)."""

from __future__ import annotations

from typing import Any

from shared_lib.services.guard import Deps


def order_view(deps: Deps, order_id: str) -> dict[str, Any] | None:
    order = deps.reads.run(lambda store: store.order(order_id))
    return order.as_dict() if order is not None else None
