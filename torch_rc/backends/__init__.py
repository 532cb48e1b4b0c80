"""Compiler backends: the Dynamo entry point and the stages it runs (partition, lower, build, run)."""
