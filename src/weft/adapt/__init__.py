"""weft.adapt"""
