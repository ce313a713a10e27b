"""What happens after training, beside the core (which never imports this package): a run's model merged into a
standard transformers folder (merge.py), and shared on the Hugging Face Hub with a model card (hub.py, card.py).

    from ftnb.export import export, push_to_hub
    export("runs/my-run", "my-model")        # merged, verified by logits against the tuned model
    push_to_hub("runs/my-run", "me/my-model")  # the adapter, its tokenizer and a model card, to a private repo
"""
from .card import model_card
from .hub import prepare_upload, push_to_hub
from .merge import export

__all__ = ["export", "model_card", "prepare_upload", "push_to_hub"]
