"""Tests of weft.adapt (a package so that basenames such as test_cli.py may repeat)."""
