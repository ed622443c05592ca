"""`localcascade serve`: an OpenAI-compatible HTTP server on the engine.

schema.py (the request), reply.py (answer text to content and tool calls),
scheduler.py (queue, sequences, conversation reuse, the decoding thread),
app.py (routes, errors, auth), run.py (the socket, uvicorn, shutdown).
The engine's batch.py decodes the sequences together.
"""
