"""The ``nova`` command: thin click commands that parse, call the engine and render."""
