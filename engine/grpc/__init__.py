"""The gRPC transport: server, servicers under one error mapping, protobuf conversion."""
