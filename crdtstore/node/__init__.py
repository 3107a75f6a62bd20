"""The node runtime: configuration, group commit, the gRPC services, and serving."""
