"""Training backends and the runner that drives them (see ``proxy.training.base``).

``openai_compatible``: any provider with OpenAI's Files and fine-tuning jobs API (OpenAI, Azure
OpenAI, Nebius, Crusoe, ``stillroom mock``). ``runner``: launches, polls and cancels jobs kept
in the store, from the server's lifespan or from the CLI.
"""
