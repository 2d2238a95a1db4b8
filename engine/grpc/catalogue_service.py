"""gRPC CatalogueService: upsert and remove the items recommend() draws from."""

from __future__ import annotations

import grpc

from engine.grpc import convert
from engine.grpc.errors import rpc
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.grpc.offload import Offload
from engine.service import Arbiter


class CatalogueServicer(pb_grpc.CatalogueServiceServicer):
    def __init__(self, arbiter: Arbiter, offload: Offload) -> None:
        self.arbiter = arbiter
        self.offload = offload

    @rpc
    async def UpsertItems(self, request: pb.UpsertItemsRequest,
                          context: grpc.aio.ServicerContext) -> pb.CatalogueResponse:
        items = []
        for i, item in enumerate(request.items):
            attributes = convert.from_values(f"items[{i}]", item.attributes)
            items.append({**attributes, "id": item.id})
        version = await self.offload.store(self.arbiter.upsert_items, items)
        return pb.CatalogueResponse(version=version, items=len(self.arbiter.catalogue))

    @rpc
    async def RemoveItems(self, request: pb.RemoveItemsRequest,
                          context: grpc.aio.ServicerContext) -> pb.CatalogueResponse:
        version = await self.offload.store(self.arbiter.remove_items, list(request.item_ids))
        return pb.CatalogueResponse(version=version, items=len(self.arbiter.catalogue))
