"""Serving: the SavedModel signature contract, a local TF-Serving-compatible server, REST
and gRPC clients, and the prediction CLI (see the serving issue; not built yet)."""
