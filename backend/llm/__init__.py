"""Talking to a model: the OpenAI-compatible client, its limiter and response cache, the embedded server, prices."""
