"""gRPC servicer and protobuf <-> core conversion."""
