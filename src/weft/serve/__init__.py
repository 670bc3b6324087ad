"""weft.serve: class-parallel decomposition and serving (sensAI). Not built yet."""
