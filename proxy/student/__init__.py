"""The student side of distillation: serve a trained student over OpenAI's API.

``source`` finds a student on disk (file system only); ``model`` loads it and generates with it
(torch, transformers and peft, the train extra, imported lazily); ``request`` checks a chat
completions body; ``toolcalls`` reads Hermes-style tool calls back into OpenAI's shape; ``app``
is the server that ``stillroom student serve`` runs. Importing this package loads none of them.
"""
