"""Model execution shared by every front end: backends, preprocessing, the repository reader."""
