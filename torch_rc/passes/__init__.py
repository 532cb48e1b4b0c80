"""Relax and TIR pipelines: legalize, fuse, the default schedules, and building an executable."""
