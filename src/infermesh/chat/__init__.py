"""Chat completions: check a request against its model, run it on a worker, shape the answer."""
