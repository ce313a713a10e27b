"""The Ollama Modelfile written beside an exported GGUF file, so that `ollama create NAME -f Modelfile` works.

Ollama formats a chat with a Go template of its own, never with the file's Jinja chat template. ftnb writes that
template when the model's chat template is ChatML, which it checks by rendering conversations (not by reading the
Jinja source). For other templates the Modelfile has no TEMPLATE: `ollama create` then looks for one of its bundled
templates whose Jinja source is within a Levenshtein distance of 100 of the file's `tokenizer.chat_template` and uses
it; when none is that close it uses `{{ .Prompt }}`, the text with no chat formatting at all (ollama/ollama
template/template.go `Named`, server `detectChatTemplate`).
"""
from ..core.errors import RunError

# Ollama's own ChatML template (template/chatml.gotmpl): the system prompt, from the Modelfile's SYSTEM or the
# request, is one of .Messages
CHATML_TEMPLATE = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                   "<|im_start|>assistant\n")
CHATML_STOP = ("<|im_start|>", "<|im_end|>")
_PROBE = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi! How can I help?"},
          {"role": "user", "content": "Tell me a joke"}]


def chatml(messages):
    """A conversation as ChatML text, ready for the assistant's answer."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def chatml_system(tok):
    """(True, the system prompt the template adds to a conversation without one, or None) when the tokenizer's chat
    template renders conversations exactly as ChatML; (False, None) otherwise."""
    try:
        with_system = tok.apply_chat_template([{"role": "system", "content": "Be brief."}] + _PROBE, tokenize=False,
                                              add_generation_prompt=True)
        without = tok.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template may refuse a system message or these roles
        return False, None
    if with_system != chatml([{"role": "system", "content": "Be brief."}] + _PROBE):
        return False, None
    if without == chatml(_PROBE):
        return True, None
    head, tail = "<|im_start|>system\n", "<|im_end|>\n" + chatml(_PROBE)  # a system prompt of its own (SmolLM2)
    if without.startswith(head) and without.endswith(tail) and "<|im_" not in without[len(head):-len(tail)]:
        return True, without[len(head):-len(tail)]
    return False, None


def modelfile_text(gguf_name, tok, system=None):
    """(the Modelfile's text, what it holds) for the GGUF file `gguf_name` beside it. `system`: the SYSTEM prompt;
    for a ChatML model without one, the template's own default (if it has one) so Ollama answers as the template
    would."""
    is_chatml, default = chatml_system(tok)
    system = system or default
    if system and '"""' in system:
        raise RunError('the system prompt contains """, which a Modelfile cannot hold (nothing was written)')
    lines = [f"FROM ./{gguf_name}"]
    if is_chatml:
        lines += [f'TEMPLATE """{CHATML_TEMPLATE}"""'] + [f'PARAMETER stop "{s}"' for s in CHATML_STOP]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    note = ("" if is_chatml else "the chat template is not ChatML, so the Modelfile has no TEMPLATE: Ollama uses one "
            "of its bundled templates if the file's template is close to it, else the raw prompt; check "
            "`ollama show NAME --template` and add a TEMPLATE if needed")
    return "\n".join(lines) + "\n", {"ollama_template": "chatml" if is_chatml else None, "system": system,
                                     "notes": [note] if note else []}
