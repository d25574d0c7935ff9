"""Test-only protos and the helper that compiles them at test time."""
