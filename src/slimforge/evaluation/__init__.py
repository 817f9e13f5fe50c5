"""Evaluation: the quality metric of each task, against a reference where one applies."""
