"""Blocks shared by two or more model families."""
