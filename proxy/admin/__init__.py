"""The admin side of ``stillroom serve``: the JSON admin API and OpenAI's Stored Completions API."""
