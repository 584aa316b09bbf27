"""Turning TRL completions and prompts into plain text.

Owns: `completion_text` (a completion given as a string or as chat messages, TRL's
conversational format) and `prompt_text`. Does not know: any reward's semantics.

Both are total functions: whatever a sampler or a plugin hands over (None, numbers, odd message
shapes, multimodal content parts), they return a string and never raise, so a reward built on
them cannot crash on the shape of its input.
"""

from __future__ import annotations

from typing import Any


def _content_text(content: Any) -> str:
    """The text of one message `content`: a string, or a list of parts (OpenAI multimodal form)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])  # {"type": "text", "text": ...}; images carry no text
        return "".join(parts)
    return str(content)


def completion_text(completion: Any) -> str:
    """The text a model produced.

    Strings pass through. TRL's conversational form is a list of messages, normally one
    `{"role": "assistant", "content": ...}`; the assistant messages' contents are joined (a tool
    call turn can split one completion into several). Anything else becomes `str(x)`, None "".
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        msgs = [m for m in completion if isinstance(m, dict)]
        if not msgs:
            return "".join(str(m) for m in completion)
        assistant = [m for m in msgs if m.get("role", "assistant") == "assistant"] or msgs
        return "\n".join(_content_text(m.get("content")) for m in assistant)
    return str(completion)


def prompt_text(prompt: Any) -> str:
    """The text of a prompt: a string, or the last user message of a chat (where the question is)."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        msgs = [m for m in prompt if isinstance(m, dict)]
        users = [m for m in msgs if m.get("role") == "user"]
        if users:
            return _content_text(users[-1].get("content"))
        return "\n".join(_content_text(m.get("content")) for m in msgs)
    if isinstance(prompt, dict):
        return _content_text(prompt.get("content"))
    return str(prompt)
