"""The `v2m` command line, the top layer: `main` (in `main`) and one module per command, each
with its parser (`register`) and its function. Nothing below imports it."""
