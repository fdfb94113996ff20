"""The worker side: what runs jobs on a real inference engine."""
