"""gRPC code generated from proto/chronocore/rpc/*.proto by `make proto`; do not edit."""
