"""Generated protobuf and gRPC code for crdtstore.v1 (scripts/gen_proto.py writes it; do not edit)."""
