"""weft.planner"""
