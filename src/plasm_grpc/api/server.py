"""The node's gRPC server: the PlasmService servicer, health and reflection.

The daemon builds, binds, starts and stops it through `NodeServer`, so grpc
and the generated service code stay here, in the api layer.
"""

from __future__ import annotations

from typing import Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from plasm.v1 import service_pb2, service_pb2_grpc

from plasm_grpc.api.service import PlasmServicer

SERVICE_NAME: Final = service_pb2.DESCRIPTOR.services_by_name["PlasmService"].full_name


class BindError(Exception):
    """gRPC cannot listen on an address; the message is its reason, as far as gRPC says."""


class NodeServer:
    """One grpc.aio server serving PlasmService, grpc.health.v1 and reflection."""

    def __init__(self, *, max_message_bytes: int, max_concurrent_rpcs: int) -> None:
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=max_concurrent_rpcs,
        )
        self._health = health.HealthServicer()

    def bind(self, address: str) -> int:
        """Listen on `address` (host:port or unix:PATH) once started; the port bound.

        Raises BindError if gRPC refuses the address.
        """
        try:
            port = self._server.add_insecure_port(address)
        except RuntimeError as err:
            raise BindError(str(err).split(";")[0]) from err
        if port == 0 and not address.startswith("unix:"):
            raise BindError("address in use or not available")
        return port

    async def start(self, servicer: PlasmServicer) -> None:
        """Register `servicer`, health and reflection, and start serving."""
        service_pb2_grpc.add_PlasmServiceServicer_to_server(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        await self._server.start()

    @property
    def health(self) -> health.HealthServicer:
        """The health service, for other listeners that report it (the console)."""
        return self._health

    def set_serving(self, serving: bool) -> None:
        """What health checks answer, for PlasmService and for the server as a whole ("")."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self._health.set(SERVICE_NAME, status)
        self._health.set("", status)

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)
