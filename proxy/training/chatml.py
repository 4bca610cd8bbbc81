"""The ChatML chat template with tools that Stillroom gives a student whose own template lacks
them (shared/reference/training.md §c.1).

Tool calls are written Hermes-style, ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``,
as Qwen2.5 writes them: the format vLLM's ``hermes`` tool parser and ``stillroom student serve``
read back. The assistant turn is wrapped in ``{% generation %}`` markers, so TRL can mask
everything else from the loss. Arguments may be objects (the ``hf`` exports) or strings.
"""

from __future__ import annotations

from typing import Final

END_OF_TURN: Final = "<|im_end|>"
SPECIAL_TOKENS: Final = ("<|endoftext|>", "<|im_start|>", END_OF_TURN, "<pad>")
TOOL_CALL_OPEN: Final = "<tool_call>"
TOOL_CALL_CLOSE: Final = "</tool_call>"

CHATML_TOOLS_TEMPLATE: Final = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}"
    '{%- endfor %}{{- \'\\n</tools>\\nCall a tool with <tool_call>{"name": ..., "arguments": '
    "{...}}</tool_call><|im_end|>\\n' }}{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- endif %}\n"
    "{%- for message in messages %}\n"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}{%- generation %}"
    "{%- if message.content %}{{- message.content }}{%- endif %}"
    "{%- for tc in message.tool_calls or [] %}"
    "{%- set f = tc.function if tc.function is defined else tc %}"
    '{{- \'<tool_call>{"name": "\' + f.name + \'", "arguments": \' }}'
    "{%- if f.arguments is string %}{{- f.arguments }}{%- else %}{{- f.arguments | tojson }}"
    "{%- endif %}{{- '}</tool_call>' }}{%- endfor %}{{- '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}\n"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>tool\\n' + message.content + '<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
