"""How well generated music follows its video: the paper's measures (`evaluate`) and the held-out
alignment check of a bundle (`alignment`). Above the runtime: it generates through the engine core."""
