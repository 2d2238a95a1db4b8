"""gRPC CatalogueService: upsert and remove the items recommend() draws from."""

from __future__ import annotations

import grpc

from engine.grpc import convert
from engine.grpc.errors import DEFAULT_DEADLINE_SECONDS, rpc
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.grpc.metrics import ServerMetrics
from engine.grpc.offload import Offload
from engine.service import Arbiter


class CatalogueServicer(pb_grpc.CatalogueServiceServicer):
    def __init__(self, arbiter: Arbiter, offload: Offload,
                 metrics: ServerMetrics | None = None,
                 default_deadline: float = DEFAULT_DEADLINE_SECONDS) -> None:
        self.arbiter = arbiter
        self.offload = offload
        self.metrics = metrics  # calls counted by method and code (engine.grpc.errors.rpc)
        self.default_deadline = default_deadline  # a call without a deadline of its own

    @rpc
    async def UpsertItems(self, request: pb.UpsertItemsRequest,
                          context: grpc.aio.ServicerContext) -> pb.CatalogueResponse:
        # on a worker thread whatever the store: up to 10,000 items converted and checked,
        # then the served catalogue rebuilt (~50 ms at 100,000 items), not on the loop
        version = await self.offload.thread(self._upsert, request)
        return pb.CatalogueResponse(version=version, items=len(self.arbiter.catalogue))

    def _upsert(self, request: pb.UpsertItemsRequest) -> int:
        items = []
        for i, item in enumerate(request.items):
            attributes = convert.from_values(f"items[{i}]", item.attributes)
            items.append({**attributes, "id": item.id})
        return self.arbiter.upsert_items(items)

    @rpc
    async def RemoveItems(self, request: pb.RemoveItemsRequest,
                          context: grpc.aio.ServicerContext) -> pb.CatalogueResponse:
        served = self.arbiter.catalogue.items  # (this server's: another's change is <1 s late)
        not_found = [item_id for item_id in request.item_ids if item_id not in served]
        version = await self.offload.thread(self.arbiter.remove_items, list(request.item_ids))
        return pb.CatalogueResponse(version=version, items=len(self.arbiter.catalogue),
                                    not_found=not_found)
