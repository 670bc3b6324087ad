"""weft.topology"""
