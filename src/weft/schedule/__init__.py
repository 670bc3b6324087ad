"""weft.schedule"""
