"""The web console: a page served by plasmd, over its own loopback HTTP listener.

`ConsoleApp` answers requests (the page, the gRPC API's answers as proto3
JSON, live job events as Server-Sent Events); `ConsoleServer` is its bounded
listener. docs/console.md describes what a user sees.
"""

from plasm_grpc.console.app import ConsoleApp, ConsoleSettings, HealthCheck
from plasm_grpc.console.server import ConsoleServer

__all__ = ["ConsoleApp", "ConsoleServer", "ConsoleSettings", "HealthCheck"]
