"""What happens after training, beside the core (which never imports this package): a run's model merged into a
standard transformers folder (merge.py), or one GGUF file for llama.cpp, Ollama and LM Studio (gguf.py, checked by
gguf_check.py, with an Ollama Modelfile from ollama.py).

    from ftnb.export import export, export_gguf
    export("runs/my-run", "my-model")        # merged, verified by logits against the tuned model
    export_gguf("runs/my-run", "my-model.gguf", type="q8_0")   # read back and compared before success
"""
from .gguf import export_gguf
from .merge import export

__all__ = ["export", "export_gguf"]
