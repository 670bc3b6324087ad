"""weft.parallel"""
