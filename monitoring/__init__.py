"""What the served model sees: the prediction log and the image sample kept for review."""
