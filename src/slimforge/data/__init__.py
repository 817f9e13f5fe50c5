"""Data: where text and labelled records come from (the stdlib corpus, local files)."""
