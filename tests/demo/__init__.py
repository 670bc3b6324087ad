"""Tests of weft.demo (a package so that basenames such as test_cli.py may repeat)."""
