"""weft.serve"""
