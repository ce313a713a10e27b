"""What happens after training, beside the core (which never imports this package): a run's model merged into a
standard transformers folder (merge.py), one GGUF file for llama.cpp, Ollama and LM Studio (gguf.py, checked by
gguf_check.py, with an Ollama Modelfile from ollama.py), or shared on the Hugging Face Hub with a model card (hub.py,
card.py). Each is verified before it reports success.

    from ftnb.export import export, export_gguf, push_to_hub
    export("runs/my-run", "my-model")                          # merged, checked by logits against the tuned model
    export_gguf("runs/my-run", "my-model.gguf", type="q8_0")   # read back and compared
    push_to_hub("runs/my-run", "me/my-model")                  # the adapter, its tokenizer and a model card, private
"""
from .card import model_card
from .gguf import export_gguf
from .hub import prepare_upload, push_to_hub
from .merge import export

__all__ = ["export", "export_gguf", "model_card", "prepare_upload", "push_to_hub"]
