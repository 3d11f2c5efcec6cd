"""Model lifecycle: the registry of versions (MLflow) and how a version reaches the repository.

The registry is the record of every version a build produced and which one is the champion;
the model repository is what the front ends read. `promote` writes a version from the
registry into the repository and then moves the alias, and `consistency` makes a front end
refuse to start when the two disagree. `retrain` turns new labelled data into a version
through the same gates, in a process of its own (`retrain_run`).
"""
