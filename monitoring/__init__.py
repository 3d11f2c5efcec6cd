"""What the served model sees: the prediction log, the image sample kept for review, and
drift from each version's reference."""
