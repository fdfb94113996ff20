"""Wire formats: the OpenAI API and the worker protocol. Types only, no logic."""
