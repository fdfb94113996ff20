"""The model catalog: which models exist, what they can do, where they are served."""
