"""Reports: Markdown (for people) and JSON (for machines) of what a run measured."""
