"""The pipeline: KFP wiring, compile, local runs and cluster submission, and the CLI."""
